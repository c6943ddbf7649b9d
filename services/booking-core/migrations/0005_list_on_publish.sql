-- An order takes its place in the lists (list_seq) when its `add` events are published, under
-- the orders lock, no longer when it is inserted: inserts run concurrently, outside the lock.
-- NULL: committed, not listed yet (the lists do not show it; its request or the settler lists it).
ALTER TABLE orders ALTER COLUMN list_seq DROP DEFAULT;
ALTER TABLE orders ALTER COLUMN list_seq DROP NOT NULL;
