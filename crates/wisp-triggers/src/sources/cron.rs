//! Cron: a standard cron expression (5 fields, or 6 with seconds first)
//! in an optional IANA time zone.
//!
//! Each tick fires once, even across restarts: the last fired tick is
//! saved as the trigger's cursor after its event is queued, and every
//! tick's event carries an idempotency key (`cron/<trigger>/<tick>`), so a
//! crash between the two cannot fire it twice. After downtime, missed
//! ticks are skipped unless `catch_up` allows firing the most recent N.
//!
//! Event: `type` `wisp.cron.tick`, `source` `/wisp/triggers/<trigger>`,
//! `id` the tick time (RFC 3339, UTC), `time` the tick time, `subject`
//! the schedule, data the configured `data` (JSON) or
//! `{"scheduled_time": …}`.

use crate::TriggerError;
use crate::sink::Delivery;
use crate::source::{Source, SourceContext, SourceError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use utoipa::ToSchema;
use wisp_events::{EventBuilder, EventBuilderV10};

/// Most missed ticks fired after downtime.
pub const MAX_CATCH_UP: u32 = 100;

/// A cron trigger's source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CronConfig {
    /// `min hour day-of-month month day-of-week`, or with a leading
    /// seconds field; names (`MON`, `JAN`), ranges, lists and steps work.
    pub schedule: String,
    /// IANA time zone the schedule is read in (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// How many ticks missed while Wisp was down to fire at start, most
    /// recent first (0 to 100; default 0: missed ticks are skipped).
    #[serde(default)]
    pub catch_up: u32,
    /// The event's data (JSON); by default `{"scheduled_time": …}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

impl Schedule {
    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Ticks are whole seconds; the first after a whole second is
        // strictly after any time within it.
        let whole =
            chrono::DurationRound::duration_trunc(after, chrono::TimeDelta::seconds(1)).ok()?;
        let local = whole.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

impl CronConfig {
    /// Parses the schedule and time zone.
    pub fn schedule(&self) -> Result<Schedule, TriggerError> {
        let cron = Cron::from_str(self.schedule.trim()).map_err(|e| {
            TriggerError::invalid("schedule", format!("not a cron expression: {e}"))
        })?;
        let tz = match &self.timezone {
            None => Tz::UTC,
            Some(name) => name.parse::<Tz>().map_err(|_| {
                TriggerError::invalid(
                    "timezone",
                    format!("`{name}` is not an IANA time zone such as `Europe/Berlin`"),
                )
            })?,
        };
        Ok(Schedule { cron, tz })
    }

    /// Checks the schedule, time zone and catch-up.
    pub fn validate(&self) -> Result<(), TriggerError> {
        crate::spec::check_text("schedule", &self.schedule)?;
        let schedule = self.schedule()?;
        if schedule.next_after(Utc::now()).is_none() {
            return Err(TriggerError::invalid("schedule", "never fires"));
        }
        if self.catch_up > MAX_CATCH_UP {
            return Err(TriggerError::invalid(
                "catch_up",
                format!("must be from 0 to {MAX_CATCH_UP}"),
            ));
        }
        Ok(())
    }
}

/// Fires a trigger's ticks.
pub struct CronSource {
    config: CronConfig,
}

impl CronSource {
    /// A source for `config` (already validated).
    pub fn new(config: CronConfig) -> Self {
        CronSource { config }
    }

    async fn fire(&self, ctx: &SourceContext, tick: DateTime<Utc>) -> Result<(), SourceError> {
        let name = &ctx.trigger.name;
        let stamp = tick.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let data = self
            .config
            .data
            .clone()
            .unwrap_or_else(|| serde_json::json!({ "scheduled_time": stamp }));
        let event = EventBuilderV10::new()
            .id(stamp.clone())
            .source(format!("/wisp/triggers/{name}"))
            .ty("wisp.cron.tick")
            .subject(self.config.schedule.clone())
            .time(tick)
            .data("application/json", data)
            .build()
            .map_err(|e| SourceError::Config(e.to_string()))?;
        let mut delivery = Delivery::new(event);
        delivery.idempotency_key = Some(format!("cron/{name}/{stamp}"));
        ctx.dispatch(vec![delivery]).await?;
        ctx.cursors.save_cursor(name, &stamp).await?;
        Ok(())
    }
}

#[async_trait]
impl Source for CronSource {
    async fn session(&self, ctx: &SourceContext) -> Result<(), SourceError> {
        let schedule = self
            .config
            .schedule()
            .map_err(|e| SourceError::Config(e.to_string()))?;
        let name = &ctx.trigger.name;
        let last = ctx
            .cursors
            .load_cursor(name)
            .await?
            .and_then(|c| DateTime::parse_from_rfc3339(&c).ok())
            .map(|t| t.with_timezone(&Utc));
        ctx.health.active();
        let now = Utc::now();
        let mut cursor = match last {
            Some(last) => {
                // Ticks missed while down: fire the most recent `catch_up`.
                let mut missed = Vec::new();
                let mut t = last;
                while let Some(next) = schedule.next_after(t) {
                    if next > now {
                        break;
                    }
                    missed.push(next);
                    if missed.len() > self.config.catch_up as usize {
                        missed.remove(0);
                    }
                    t = next;
                }
                for tick in missed.into_iter().take(self.config.catch_up as usize) {
                    self.fire(ctx, tick).await?;
                }
                now.max(last)
            }
            None => now,
        };
        loop {
            let Some(next) = schedule.next_after(cursor) else {
                // A schedule with no future tick: nothing more to do.
                ctx.cancelled().await;
                return Ok(());
            };
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = ctx.cancelled() => return Ok(()),
            }
            // The timer may wake a hair early; never fire before the tick.
            while Utc::now() < next {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            self.fire(ctx, next).await?;
            cursor = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(schedule: &str, tz: Option<&str>) -> CronConfig {
        CronConfig {
            schedule: schedule.into(),
            timezone: tz.map(str::to_string),
            catch_up: 0,
            data: None,
        }
    }

    #[test]
    fn five_and_six_field_schedules_in_a_time_zone() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let daily = config("30 9 * * *", Some("Europe/Berlin"))
            .schedule()
            .unwrap();
        // 09:30 in Berlin in winter is 08:30 UTC.
        assert_eq!(
            daily.next_after(at("2026-01-10T00:00:00Z")).unwrap(),
            at("2026-01-10T08:30:00Z")
        );
        let every5s = config("*/5 * * * * *", None).schedule().unwrap();
        assert_eq!(
            every5s.next_after(at("2026-01-10T00:00:03Z")).unwrap(),
            at("2026-01-10T00:00:05Z")
        );
        // Strictly after.
        assert_eq!(
            every5s.next_after(at("2026-01-10T00:00:05Z")).unwrap(),
            at("2026-01-10T00:00:10Z")
        );
    }

    #[test]
    fn bad_schedules_and_zones_are_refused() {
        assert_eq!(
            config("61 * * * *", None).validate().unwrap_err().field(),
            "schedule"
        );
        assert_eq!(
            config("* * *", None).validate().unwrap_err().field(),
            "schedule"
        );
        assert_eq!(
            config("* * * * *", Some("Mars/Olympus"))
                .validate()
                .unwrap_err()
                .field(),
            "timezone"
        );
        let mut c = config("* * * * *", None);
        c.catch_up = MAX_CATCH_UP + 1;
        assert_eq!(c.validate().unwrap_err().field(), "catch_up");
    }
}
