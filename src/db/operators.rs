use diesel::prelude::*;

use super::{
    dispatch, locks,
    models::{NewOperatorRow, OperatorRow},
    reader::{Reader, keyset_page},
    run::RunOn,
    schema::{operator_history, operators},
    tx::WriteTx,
    units::{CheckContext, Checked, WriteUnit},
};
use crate::{
    Error, Result,
    domain::{NewOperator, Operator, OperatorChanges, Page, PageRequest, Timestamp},
    error::Fault,
};

pub(crate) fn get(reader: &mut Reader<'_>, id: i64) -> Result<Operator> {
    find(reader, id)?.ok_or_else(|| not_found(id))
}

fn find(reader: &mut Reader<'_>, id: i64) -> QueryResult<Option<Operator>> {
    Ok(reader
        .first::<_, OperatorRow>(operators::table.find(id).select(operators::all_columns))
        .optional()?
        .map(Operator::from))
}

fn not_found(id: i64) -> Error {
    Error::not_found(format_args!("operator {id}"))
}

/// NOT_FOUND unless the operator exists.
pub(crate) fn must_exist(reader: &mut Reader<'_>, id: i64) -> Result<()> {
    reader.must_find(operators::table.find(id), format_args!("operator {id}"))
}

pub(crate) fn list(
    reader: &mut Reader<'_>,
    page: PageRequest,
    is_active: Option<bool>,
) -> Result<Page<Operator>> {
    let mut query = operators::table.select(operators::all_columns).into_boxed();
    if let Some(is_active) = is_active {
        query = query.filter(operators::is_active.eq(is_active));
    }
    Ok(keyset_page!(reader, query, operators::id, page, OperatorRow => Operator)?)
}

/// CreateOperator.
pub(crate) struct Create(pub(crate) NewOperator);

impl WriteUnit for Create {
    type Output = Operator;
    type Plan = ();

    fn check(&self, _: &mut CheckContext<'_, '_>) -> Result<Checked<(), Operator>> {
        Ok(Checked::Apply(()))
    }

    fn apply(&self, tx: &mut WriteTx<'_>, (): ()) -> Result<Operator, Fault> {
        let Self(new) = self;
        let row: OperatorRow = diesel::insert_into(operators::table)
            .values(NewOperatorRow {
                name: new.name.as_str(),
                is_active: new.is_active,
                max_load: new.max_load.get(),
                active_load: 0,
                created_at: Timestamp::now().as_micros(),
            })
            .returning(operators::all_columns)
            .get_result_on(tx.connection())?;
        Ok(row.into())
    }
}

#[derive(AsChangeset)]
#[diesel(table_name = operators)]
struct OperatorChangeset<'a> {
    name: Option<&'a str>,
    is_active: Option<bool>,
    max_load: Option<i32>,
}

/// UpdateOperator: applies the changes; new capacity is handed to pending
/// contacts at once.
pub(crate) struct Update {
    pub(crate) id: i64,
    pub(crate) changes: OperatorChanges,
}

impl WriteUnit for Update {
    type Output = Operator;
    type Plan = ();

    fn check(&self, context: &mut CheckContext<'_, '_>) -> Result<Checked<(), Operator>> {
        must_exist(&mut context.reader, self.id)?;
        Ok(Checked::Apply(()))
    }

    fn apply(&self, tx: &mut WriteTx<'_>, (): ()) -> Result<Operator, Fault> {
        let Self { id, changes } = self;
        let served = if changes.may_add_capacity() {
            locks::operator_sources(tx, *id, None)?
        } else {
            Vec::new()
        };
        record_history(tx, *id, changes)?;
        let changeset = OperatorChangeset {
            name: changes.name().map(|name| name.as_str()),
            is_active: changes.is_active(),
            max_load: changes.max_load().map(|max_load| max_load.get()),
        };
        diesel::update(operators::table.find(id))
            .set(&changeset)
            .execute_on(tx.operator_tables()?)?;
        dispatch::pending(tx, &served)?;
        // The answer shows the load after the dispatch.
        tx.write_loads()?;
        find(&mut tx.reader(), *id)?.ok_or_else(|| Fault::vanished(format_args!("operator {id}")))
    }
}

/// Notes when the change lowers `max_load` or deactivates the operator:
/// both leave it holding contacts beyond what a new assignment may give it,
/// which `minicrm check` must tell from a breach of the invariant.
fn record_history(tx: &mut WriteTx<'_>, id: i64, changes: &OperatorChanges) -> Result<(), Fault> {
    let now = Timestamp::now().as_micros();
    let target = operator_history::table.find(id);
    if let Some(max_load) = changes.max_load() {
        diesel::update(target.filter(operator_history::max_load.gt(max_load.get())))
            .set(operator_history::max_load_lowered_at.eq(Some(now)))
            .execute_on(tx.operator_tables()?)?;
    }
    if changes.is_active() == Some(false) {
        diesel::update(target.filter(operator_history::is_active.eq(true)))
            .set(operator_history::deactivated_at.eq(Some(now)))
            .execute_on(tx.operator_tables()?)?;
    }
    Ok(())
}
