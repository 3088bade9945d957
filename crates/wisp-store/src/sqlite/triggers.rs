//! [`TriggerStore`] on the SQLite metadata database.

use super::{SqliteStore, from_ns, to_ns};
use crate::StoreError;
use crate::triggers::{MAX_TRIGGER_SPEC_BYTES, MAX_TRIGGERS, StoredTrigger, TriggerStore};
use rusqlite::{OptionalExtension, Row, params};

fn row_to_trigger(row: &Row<'_>) -> rusqlite::Result<StoredTrigger> {
    Ok(StoredTrigger {
        name: row.get(0)?,
        spec: row.get(1)?,
        created_at: from_ns(row.get(2)?),
        updated_at: from_ns(row.get(3)?),
    })
}

const COLUMNS: &str = "name, spec, created_ns, updated_ns";

#[async_trait::async_trait]
impl TriggerStore for SqliteStore {
    async fn put_trigger(
        &self,
        name: &str,
        spec: String,
        create: bool,
        keep_cursor: bool,
    ) -> Result<StoredTrigger, StoreError> {
        if spec.len() > MAX_TRIGGER_SPEC_BYTES {
            return Err(StoreError::LimitReached(format!(
                "a trigger definition is at most {MAX_TRIGGER_SPEC_BYTES} bytes of JSON"
            )));
        }
        let name = name.to_string();
        self.write(None, move |tx| {
            let now = to_ns(chrono::Utc::now());
            let exists: Option<i64> = tx
                .query_row(
                    "SELECT created_ns FROM triggers WHERE name = ?1",
                    [&name],
                    |r| r.get(0),
                )
                .optional()?;
            match (create, exists) {
                (true, Some(_)) => {
                    return Err(StoreError::AlreadyExists(format!("trigger `{name}`")));
                }
                (false, None) => return Err(StoreError::TriggerNotFound(name)),
                (true, None) => {
                    let count: i64 =
                        tx.query_row("SELECT count(*) FROM triggers", [], |r| r.get(0))?;
                    if count as u64 >= MAX_TRIGGERS {
                        return Err(StoreError::LimitReached(format!(
                            "at most {MAX_TRIGGERS} triggers; delete some first"
                        )));
                    }
                    tx.execute(
                        "INSERT INTO triggers (name, spec, created_ns, updated_ns) VALUES (?1, ?2, ?3, ?3)",
                        params![name, spec, now],
                    )?;
                }
                (false, Some(_)) => {
                    tx.execute(
                        "UPDATE triggers SET spec = ?2, updated_ns = ?3 WHERE name = ?1",
                        params![name, spec, now],
                    )?;
                    if !keep_cursor {
                        tx.execute("DELETE FROM trigger_cursors WHERE name = ?1", [&name])?;
                    }
                }
            }
            Ok(tx.query_row(
                &format!("SELECT {COLUMNS} FROM triggers WHERE name = ?1"),
                [&name],
                row_to_trigger,
            )?)
        })
        .await
    }

    async fn get_trigger(&self, name: &str) -> Result<StoredTrigger, StoreError> {
        let name = name.to_string();
        self.with_conn(move |_, conn| {
            conn.query_row(
                &format!("SELECT {COLUMNS} FROM triggers WHERE name = ?1"),
                [&name],
                row_to_trigger,
            )
            .optional()?
            .ok_or(StoreError::TriggerNotFound(name))
        })
        .await
    }

    async fn list_triggers(&self) -> Result<Vec<StoredTrigger>, StoreError> {
        self.with_conn(move |_, conn| {
            let mut stmt =
                conn.prepare(&format!("SELECT {COLUMNS} FROM triggers ORDER BY name"))?;
            let rows = stmt.query_map([], row_to_trigger)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn delete_trigger(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.write(None, move |tx| {
            if tx.execute("DELETE FROM triggers WHERE name = ?1", [&name])? == 0 {
                return Err(StoreError::TriggerNotFound(name));
            }
            Ok(())
        })
        .await
    }

    async fn trigger_cursor(&self, name: &str) -> Result<Option<String>, StoreError> {
        let name = name.to_string();
        self.with_conn(move |_, conn| {
            Ok(conn
                .query_row(
                    "SELECT cursor FROM trigger_cursors WHERE name = ?1",
                    [&name],
                    |r| r.get(0),
                )
                .optional()?)
        })
        .await
    }

    async fn save_trigger_cursor(&self, name: &str, cursor: &str) -> Result<(), StoreError> {
        let (name, cursor) = (name.to_string(), cursor.to_string());
        self.write(None, move |tx| {
            tx.execute(
                "INSERT INTO trigger_cursors (name, cursor)
                 SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM triggers WHERE name = ?1)
                 ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor",
                params![name, cursor],
            )?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn crud_cursors_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("wisp.db")).unwrap();
        let t = store
            .put_trigger("a", "{\"x\":1}".into(), true, false)
            .await
            .unwrap();
        assert_eq!(t.spec, "{\"x\":1}");
        assert!(matches!(
            store.put_trigger("a", "{}".into(), true, false).await,
            Err(StoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            store.put_trigger("b", "{}".into(), false, false).await,
            Err(StoreError::TriggerNotFound(_))
        ));
        store.save_trigger_cursor("a", "c1").await.unwrap();
        // A cursor of an unknown trigger is ignored.
        store.save_trigger_cursor("zzz", "c").await.unwrap();
        assert_eq!(store.trigger_cursor("zzz").await.unwrap(), None);
        assert_eq!(
            store.trigger_cursor("a").await.unwrap().as_deref(),
            Some("c1")
        );
        // Replacing keeps the cursor only when asked.
        store
            .put_trigger("a", "{\"x\":2}".into(), false, true)
            .await
            .unwrap();
        assert_eq!(
            store.trigger_cursor("a").await.unwrap().as_deref(),
            Some("c1")
        );
        let t2 = store
            .put_trigger("a", "{\"x\":3}".into(), false, false)
            .await
            .unwrap();
        assert_eq!(store.trigger_cursor("a").await.unwrap(), None);
        assert_eq!(t2.created_at, t.created_at);
        assert!(t2.updated_at >= t.updated_at);
        store
            .put_trigger("b", "{}".into(), true, false)
            .await
            .unwrap();
        let names: Vec<String> = store
            .list_triggers()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        store.save_trigger_cursor("a", "c2").await.unwrap();
        store.delete_trigger("a").await.unwrap();
        assert!(matches!(
            store.get_trigger("a").await,
            Err(StoreError::TriggerNotFound(_))
        ));
        assert!(matches!(
            store.delete_trigger("a").await,
            Err(StoreError::TriggerNotFound(_))
        ));
        // Its cursor went with it.
        store
            .put_trigger("a", "{}".into(), true, false)
            .await
            .unwrap();
        assert_eq!(store.trigger_cursor("a").await.unwrap(), None);
        let big = "x".repeat(MAX_TRIGGER_SPEC_BYTES + 1);
        assert!(matches!(
            store.put_trigger("c", big, true, false).await,
            Err(StoreError::LimitReached(_))
        ));
    }
}
