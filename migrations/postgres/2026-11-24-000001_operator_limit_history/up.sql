-- When an operator's max_load was last lowered and when it was last
-- deactivated (microseconds since the epoch, as every time here). Both are
-- allowed while it holds ACTIVE contacts, so `minicrm check` needs them to
-- tell such contacts from ones assigned in breach of the invariant: an
-- operator may hold more than max_load, or hold contacts while inactive,
-- only with contacts assigned before the change.
ALTER TABLE operators ADD COLUMN max_load_lowered_at BIGINT;
ALTER TABLE operators ADD COLUMN deactivated_at BIGINT;

-- What is there already is taken as it is.
UPDATE operators
   SET max_load_lowered_at = (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT
 WHERE active_load > max_load;
UPDATE operators
   SET deactivated_at = (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT
 WHERE NOT is_active;
