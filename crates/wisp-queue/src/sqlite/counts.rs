//! Invocations per function and status (`status_counts`), kept by the
//! writer: each write records how it moved invocations between statuses,
//! and the group writes the sum once per function and status just before
//! it commits. (Triggers did this per row, which cost a statement journal
//! and a trigger program on every insert and status change.)

use crate::error::QueueError;
use crate::model::Status;
use rusqlite::{Connection, params};
use std::collections::HashMap;
use wisp_core::FunctionName;

/// Functions whose committed depth is remembered; past it the memory is
/// dropped and refilled from the table as needed.
const MAX_REMEMBERED: usize = 4096;

/// The statuses the depth limit counts.
const ACTIVE: [Status; 3] = [Status::Queued, Status::Retrying, Status::Running];

fn slot(status: Status) -> usize {
    match status {
        Status::Queued => 0,
        Status::Running => 1,
        Status::Retrying => 2,
        Status::Succeeded => 3,
        Status::Failed => 4,
        Status::Dead => 5,
    }
}

/// The writer's view of `status_counts`: the committed depth of the
/// functions it has looked at, and the changes of the transaction under way.
#[derive(Debug, Default)]
pub(super) struct Counts {
    /// Committed queued + retrying + running, per function.
    depth: HashMap<FunctionName, i64>,
    /// Changes not yet written to the table, per function, by [`slot`].
    pending: HashMap<FunctionName, [i64; 6]>,
}

impl Counts {
    fn pending_mut(&mut self, function: &FunctionName) -> &mut [i64; 6] {
        if !self.pending.contains_key(function) {
            self.pending.insert(function.clone(), [0; 6]);
        }
        self.pending.get_mut(function).expect("just inserted")
    }

    /// `n` invocations of `function` entered (or, negative, left) `status`.
    pub fn add(&mut self, function: &FunctionName, status: Status, n: i64) {
        if n != 0 {
            self.pending_mut(function)[slot(status)] += n;
        }
    }

    /// An invocation of `function` went from `from` to `to`.
    pub fn moved(&mut self, function: &FunctionName, from: Status, to: Status) {
        if from != to {
            let p = self.pending_mut(function);
            p[slot(from)] -= 1;
            p[slot(to)] += 1;
        }
    }

    /// Queued, retrying and running invocations of `function`, counting
    /// the changes of the transaction under way.
    pub fn depth(&mut self, conn: &Connection, function: &FunctionName) -> Result<u64, QueueError> {
        let committed = match self.depth.get(function) {
            Some(d) => *d,
            None => {
                let d = read_depth(conn, function)?;
                if self.depth.len() >= MAX_REMEMBERED {
                    self.depth.clear();
                }
                self.depth.insert(function.clone(), d);
                d
            }
        };
        let pending = self.pending.get(function).map_or(0, active);
        Ok((committed + pending).max(0) as u64)
    }

    /// Invocations in all, counting the changes under way.
    pub fn total(&self, conn: &Connection) -> Result<i64, QueueError> {
        let stored: i64 = conn
            .prepare_cached("SELECT COALESCE(SUM(n), 0) FROM status_counts")?
            .query_row([], |r| r.get(0))?;
        let pending: i64 = self.pending.values().flatten().sum();
        Ok(stored + pending)
    }

    /// Writes the changes under way into `status_counts`, inside the
    /// transaction that made them.
    pub fn flush(&self, conn: &Connection) -> Result<(), QueueError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut stmt = conn.prepare_cached(
            "INSERT INTO status_counts (function, status, n) VALUES (?1, ?2, ?3)
             ON CONFLICT (function, status) DO UPDATE SET n = n + excluded.n",
        )?;
        for (function, changes) in &self.pending {
            for status in Status::ALL {
                let n = changes[slot(status)];
                if n != 0 {
                    stmt.execute(params![function.as_str(), status.as_str(), n])?;
                }
            }
        }
        Ok(())
    }

    /// The transaction that carried the changes committed.
    pub fn committed(&mut self) {
        for (function, changes) in self.pending.drain() {
            if let Some(d) = self.depth.get_mut(&function) {
                *d += active(&changes);
            }
        }
    }

    /// The transaction that carried the changes was rolled back.
    pub fn discard(&mut self) {
        self.pending.clear();
    }
}

fn active(changes: &[i64; 6]) -> i64 {
    ACTIVE.iter().map(|s| changes[slot(*s)]).sum()
}

/// Queued, retrying and running invocations of `function`, as committed.
pub(super) fn read_depth(conn: &Connection, function: &FunctionName) -> Result<i64, QueueError> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(n), 0) FROM status_counts
             WHERE function = ?1 AND status IN ('queued', 'retrying', 'running')",
        )?
        .query_row([function.as_str()], |r| r.get(0))?;
    Ok(n)
}
