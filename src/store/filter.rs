//! A [`Filter`] as SQL: the `WHERE` conditions of the lists and the bulk
//! actions, with their parameters. Only the conditions present are
//! written, so each combination is planned for what it asks (an index per
//! filter: see `sql/0005_events.sql`), and every value travels as a bound
//! parameter, never in the text.

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;

use crate::domain::MessageKind;
use crate::domain::filter::Filter;

/// A bound parameter of a filter.
pub(super) type Param = Box<dyn ToSql + Sync + Send>;

/// The conditions of `f` joined by `AND` (`TRUE` for none), numbering its
/// parameters from `$1`, and the parameters in that order. The caller
/// numbers its own after them.
pub(super) fn conditions(kind: MessageKind, f: &Filter) -> (String, Vec<Param>) {
    let mut sql: Vec<String> = Vec::new();
    let mut params: Vec<Param> = Vec::new();
    let bind = |params: &mut Vec<Param>, p: Param| {
        params.push(p);
        format!("${}", params.len())
    };
    if let Some(s) = f.status {
        let p = bind(&mut params, Box::new(s.as_str().to_owned()));
        sql.push(format!("status = {p}"));
    }
    let (recipient, other) = match kind {
        MessageKind::Contact => ("email", "name"),
        MessageKind::Notify => ("recipient", "subject"),
    };
    if let Some(r) = &f.recipient {
        let p = bind(&mut params, Box::new(r.clone()));
        sql.push(format!("lower({recipient}) = lower({p})"));
    }
    let instants: [(&str, Option<DateTime<Utc>>); 2] =
        [(">", f.created_after), ("<", f.created_before)];
    for (op, at) in instants {
        if let Some(at) = at {
            let p = bind(&mut params, Box::new(at));
            sql.push(format!("created_at {op} {p}"));
        }
    }
    if let Some(s) = &f.search {
        let p = bind(&mut params, Box::new(format!("%{}%", escape_like(s))));
        sql.push(format!("({recipient} ILIKE {p} OR {other} ILIKE {p})"));
    }
    if sql.is_empty() {
        ("TRUE".to_owned(), params)
    } else {
        (sql.join(" AND "), params)
    }
}

/// `s` matched literally by `LIKE`: its wildcards and the escape character
/// (backslash, the default) escaped.
fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The parameters as the driver takes them, followed by `more`.
pub(super) fn refs<'a>(
    params: &'a [Param],
    more: &[&'a (dyn ToSql + Sync)],
) -> Vec<&'a (dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .chain(more.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Status;

    #[test]
    fn only_the_conditions_given_are_written_in_order() {
        let (sql, params) = conditions(MessageKind::Notify, &Filter::default());
        assert_eq!((sql.as_str(), params.len()), ("TRUE", 0));
        let f = Filter {
            status: Some(Status::Failed),
            recipient: Some("A@b.co".into()),
            search: Some("50%_off\\".into()),
            ..Filter::default()
        };
        let (sql, params) = conditions(MessageKind::Contact, &f);
        assert_eq!(
            sql,
            "status = $1 AND lower(email) = lower($2) AND (email ILIKE $3 OR name ILIKE $3)"
        );
        assert_eq!(params.len(), 3);
        assert_eq!(escape_like("50%_off\\"), "50\\%\\_off\\\\");
    }
}
