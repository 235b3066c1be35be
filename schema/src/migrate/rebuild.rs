//! Rebuilding a table under its own name, for migrations that change what a table holds (a new
//! column computed from old rows, a new engine or sorting key, a rollup whose definition
//! changed): ClickHouse cannot ALTER those, so the table is built anew beside the old one and
//! the two are exchanged.
//!
//! Nothing is lost or counted twice while data keeps arriving, because of how ClickHouse wires
//! materialized views (checked on the engine: a view finds its source and its target by *name*
//! at insert time, and `EXCHANGE TABLES` swaps names atomically) and because every rollup
//! aggregate is idempotent (min, max, argMax, set union), as is a raw table that collapses
//! rows on their id:
//!
//! 1. **prepare**: statements on the old table so that it accepts the new definition's rows
//!    (e.g. add the new column), needed during the switch below;
//! 2. **build**: drop what a crashed run left, create `T__next` with the new definition, and a
//!    view feeding it from now on: the new rollup select for a rollup, a copy of every new row
//!    of the old table for a raw table;
//! 3. **fill**: `INSERT INTO T__next SELECT ...` over everything stored so far (rows the feeding
//!    view also saw are merged or collapsed);
//! 4. **switch**: for a rollup, point its existing view at the new select (`MODIFY QUERY`): from
//!    then on it writes the new rows into the old table, and `T__next` still gets them from the
//!    feeding view; then `EXCHANGE TABLES T AND T__next`, after which the existing view writes
//!    into the new table (by name) and the feeding view into the old one (harmless);
//! 5. **cleanup**: drop the feeding view and the old table (now `T__next`), and retire what the
//!    old definition left on the other names of the table (a cluster's Distributed table).
//!
//! The rebuilt table carries its revision's comment: a run that finds it there (a rerun after a
//! crash past the switch) only cleans up. Any other partial run starts again from step 2.
//! Only one `migrate` runs these at a time (see the lock).

use crate::ddl::{SchemaConfig, Table, View, revision_comment, table_by_name};

/// The suffix of a table or view being built.
const NEXT: &str = "__next";

/// What fills the new table: `select` over the old data, into `columns` (all, in order, if none).
struct Fill<'a> {
    columns: Option<&'a str>,
    select: &'a str,
}

/// A rebuild, rendered for one configuration.
#[derive(Clone, Debug)]
pub struct Rebuild {
    /// The local name of the table being replaced.
    pub table: String,
    /// Its comment once rebuilt.
    pub marker: String,
    pub prepare: Vec<String>,
    pub build: Vec<String>,
    pub fill: Vec<String>,
    pub switch: Vec<String>,
    pub cleanup: Vec<String>,
}

impl Rebuild {
    /// Every statement, in order: what `migrate --print` shows and the checksum covers.
    pub fn statements(&self) -> Vec<String> {
        [
            &self.prepare,
            &self.build,
            &self.fill,
            &self.switch,
            &self.cleanup,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    /// A rollup `table` fed by `view` (both in their new definitions; the view's select lists
    /// the table's columns in order, as the fill inserts by position). `prepare` and `retire` are
    /// run on every name of the table (`$table`, `$on_cluster`): before the switch on the old
    /// table, after it on the new one.
    pub(crate) fn rollup(
        config: &SchemaConfig,
        table: &Table,
        view: &View,
        prepare: &[&str],
        retire: &[&str],
    ) -> Self {
        let source = table_by_name(view.source);
        let feed_name = format!("{}{NEXT}", view.name);
        let feed = config.create_view_into(view, &feed_name, &config.local_name_with(table, NEXT));
        let select = config.view_select(view, &config.query_name_with(source, ""));
        let fill = Fill {
            columns: None,
            select: &select,
        };
        let mut rebuild = Self::new(config, table, &feed_name, feed, &fill, prepare, retire);
        rebuild.switch.insert(0, config.modify_view_query(view));
        rebuild
    }

    /// A raw `table` (written by ingest under its name) whose new definition's columns are
    /// `columns`, all readable from the old table once `prepare` ran.
    pub(crate) fn raw(
        config: &SchemaConfig,
        table: &Table,
        columns: &str,
        prepare: &[&str],
    ) -> Self {
        let db = &config.database;
        let feed_name = format!("{}_mv{NEXT}", table.name);
        let feed = format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{feed_name}{} TO {db}.{}\nAS SELECT {columns} FROM {db}.{}",
            config.on_cluster(),
            config.local_name_with(table, NEXT),
            config.local_name(table),
        );
        let select = format!(
            "SELECT {columns} FROM {db}.{}",
            config.query_name_with(table, "")
        );
        // Columns named: the old table has them in another order.
        let fill = Fill {
            columns: Some(columns),
            select: &select,
        };
        Self::new(config, table, &feed_name, feed, &fill, prepare, &[])
    }

    fn new(
        config: &SchemaConfig,
        table: &Table,
        feed_name: &str,
        feed: String,
        fill: &Fill<'_>,
        prepare: &[&str],
        retire: &[&str],
    ) -> Self {
        let db = &config.database;
        let on = config.on_cluster();
        let on_names = |templates: &[&str]| -> Vec<String> {
            let mut statements = Vec::new();
            for name in config.names_with(table, "") {
                for template in templates {
                    statements.push(
                        template
                            .replace("$table", &format!("{db}.{name}"))
                            .replace("$on_cluster", &on),
                    );
                }
            }
            statements
        };
        let drop_next = || -> Vec<String> {
            let mut statements = vec![format!("DROP VIEW IF EXISTS {db}.{feed_name}{on} SYNC")];
            // The Distributed table first: it reads the local one.
            for name in config.names_with(table, NEXT).iter().rev() {
                statements.push(format!("DROP TABLE IF EXISTS {db}.{name}{on} SYNC"));
            }
            statements
        };

        let mut build = drop_next();
        build.extend(config.create_table_with(table, NEXT));
        build.push(feed);

        // On a cluster the fill goes through the Distributed tables, which spread the rows by
        // tenant exactly as the source is spread; synchronously, so that the switch finds them.
        let settings = if config.is_cluster() {
            " SETTINGS distributed_foreground_insert = 1"
        } else {
            ""
        };
        let columns = fill.columns.map(|c| format!(" ({c})")).unwrap_or_default();
        let fill = vec![format!(
            "INSERT INTO {db}.{}{columns}{settings}\n{}",
            config.query_name_with(table, NEXT),
            fill.select
        )];
        let switch = vec![format!(
            "EXCHANGE TABLES {db}.{} AND {db}.{}{on}",
            config.local_name(table),
            config.local_name_with(table, NEXT),
        )];
        let mut cleanup = drop_next();
        cleanup.extend(on_names(retire));
        Self {
            table: config.local_name(table),
            marker: revision_comment(table).expect("a rebuilt table has a revision above 1"),
            prepare: on_names(prepare),
            build,
            fill,
            switch,
            cleanup,
        }
    }
}
