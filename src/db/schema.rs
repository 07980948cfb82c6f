//! Written by hand for both backends: every column has one SQL type that
//! SQLite and PostgreSQL both map to the same Rust type.

diesel::table! {
    operators (id) {
        id -> BigInt,
        name -> Text,
        is_active -> Bool,
        max_load -> Integer,
        active_load -> Integer,
        created_at -> BigInt,
    }
}

diesel::table! {
    sources (id) {
        id -> BigInt,
        bot_id -> Text,
        name -> Text,
        created_at -> BigInt,
        accept_timeout_nanos -> Nullable<BigInt>,
        sticky_window_nanos -> Nullable<BigInt>,
    }
}

diesel::table! {
    source_operators (source_id, operator_id) {
        source_id -> BigInt,
        operator_id -> BigInt,
        weight -> Integer,
    }
}

diesel::table! {
    leads (id) {
        id -> BigInt,
        external_id -> Nullable<Text>,
        phone -> Nullable<Text>,
        email -> Nullable<Text>,
        name -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    contacts (id) {
        id -> BigInt,
        lead_id -> BigInt,
        source_id -> BigInt,
        operator_id -> Nullable<BigInt>,
        status -> Integer,
        created_at -> BigInt,
        assigned_at -> Nullable<BigInt>,
        closed_at -> Nullable<BigInt>,
        request_id -> Nullable<Text>,
        lead_created -> Bool,
        accepted_at -> Nullable<BigInt>,
        accept_deadline -> Nullable<BigInt>,
        lapses -> Integer,
        lapsed_with -> Nullable<Text>,
    }
}

diesel::joinable!(source_operators -> operators (operator_id));
diesel::joinable!(source_operators -> sources (source_id));
diesel::joinable!(contacts -> leads (lead_id));
diesel::joinable!(contacts -> sources (source_id));
diesel::joinable!(contacts -> operators (operator_id));

diesel::table! {
    contact_counts (operator_id, source_id) {
        operator_id -> BigInt,
        source_id -> BigInt,
        active -> BigInt,
        closed -> BigInt,
        total -> BigInt,
        lapsed -> BigInt,
    }
}

diesel::table! {
    pending_counts (source_id) {
        source_id -> BigInt,
        pending -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    contact_events,
    event_ids,
    operators,
    sources,
    source_operators,
    leads,
    contacts,
    contact_counts,
    pending_counts,
);

diesel::table! {
    contact_events (id) {
        id -> BigInt,
        contact_id -> BigInt,
        source_id -> BigInt,
        kind -> Integer,
        time -> BigInt,
        status -> Integer,
        operator_id -> Nullable<BigInt>,
        previous_operator_id -> Nullable<BigInt>,
        assigned_at -> Nullable<BigInt>,
        closed_at -> Nullable<BigInt>,
        reason -> Nullable<Integer>,
        candidates -> Nullable<Binary>,
        accepted_at -> Nullable<BigInt>,
        accept_deadline -> Nullable<BigInt>,
        lapses -> Integer,
    }
}

diesel::table! {
    event_ids (id) {
        id -> Integer,
        last -> BigInt,
    }
}

diesel::joinable!(contact_events -> contacts (contact_id));

// The operators' history columns, apart from `operators` so that its rows
// (`operators::all_columns`) stay as they are: only UpdateOperator writes
// them and only `minicrm check` reads them.
diesel::table! {
    #[sql_name = "operators"]
    operator_history (id) {
        id -> BigInt,
        is_active -> Bool,
        max_load -> Integer,
        /// When `max_load` was last lowered.
        max_load_lowered_at -> Nullable<BigInt>,
        /// When the operator was last deactivated.
        deactivated_at -> Nullable<BigInt>,
    }
}
