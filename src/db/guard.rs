//! Guards for statements that change a contact read earlier, outside the
//! batch's buffers: the statement matches only while the row is still as
//! read, so a concurrent change it did not see (another replica's lapse,
//! transfer or accept, which keep the status) makes it match nothing.

use diesel::sql_types::{BigInt, Nullable};

diesel::define_sql_function! {
    /// `COALESCE(x, y)`, to compare nullable columns in one form on both
    /// backends.
    fn coalesce(x: Nullable<BigInt>, y: BigInt) -> BigInt;
}

/// `unchanged!(&row)`: the contact's row, filtered on every field a write
/// of the contact's routing changes (status, operator, assignment time,
/// acceptance, deadline) holding what `row` shows.
macro_rules! unchanged {
    ($row:expr) => {{
        let row: &$crate::db::models::ContactRow = $row;
        $crate::db::schema::contacts::table
            .find(row.id)
            .filter($crate::db::schema::contacts::status.eq(row.status))
            .filter(
                $crate::db::guard::coalesce($crate::db::schema::contacts::operator_id, -1)
                    .eq(row.operator_id.unwrap_or(-1)),
            )
            .filter(
                $crate::db::guard::coalesce($crate::db::schema::contacts::assigned_at, -1)
                    .eq(row.assigned_at.unwrap_or(-1)),
            )
            .filter(
                $crate::db::guard::coalesce($crate::db::schema::contacts::accepted_at, -1)
                    .eq(row.accepted_at.unwrap_or(-1)),
            )
            .filter(
                $crate::db::guard::coalesce($crate::db::schema::contacts::accept_deadline, -1)
                    .eq(row.accept_deadline.unwrap_or(-1)),
            )
    }};
}
pub(crate) use unchanged;
