-- A delivery being sent is claimed in the ledger before its provider call (decision 0064): the
-- replica sending it (``claimed_by``, its CAIRN_REPLICA_ID) renews ``claim_until`` while the call
-- and the ledger write are under way. A copy redelivered to another replica meanwhile (a lost
-- in-progress ack during a NATS leader election, a slow batch) meets the claim and waits for the
-- outcome instead of sending it a second time; a claim whose replica died lapses at
-- ``claim_until``, and the same replica restarted takes its own claims back at once.
ALTER TABLE delivery_ledger DROP CONSTRAINT delivery_ledger_status_check;
ALTER TABLE delivery_ledger ADD CONSTRAINT delivery_ledger_status_check CHECK (status IN (
    'sent', 'failed', 'bounced', 'skipped', 'suppressed', 'dropped', 'dead_lettered',
    'retrying', 'deferred', 'sending'));
ALTER TABLE delivery_ledger ADD COLUMN claimed_by text;
ALTER TABLE delivery_ledger ADD COLUMN claim_until timestamptz;
