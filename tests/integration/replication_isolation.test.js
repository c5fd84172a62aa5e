// Snapshot isolation under apply (issue 3): reader processes (bankcheck,
// tests/tools/bankcheck.c) open the replica read-only and check a bank
// invariant on every read transaction, while the replica applies a stream of
// transfers, and while it takes a snapshot of another database that has the
// same schema (but other root pages, other totals, auto_vacuum=FULL, fewer
// pages and the same schema cookie) and replaces the first. Each read must see
// exactly one committed state: the first database's total or the second's,
// never a mix, never going back, and never an error other than SQLITE_BUSY
// (DESIGN.md, replication contract 3, 5). One more reader holds each read
// transaction open for a while and reads twice: both reads must agree. The
// readers' timelines show that they were reading while the snapshot was
// being applied (between the replica's "snapshot begins" and "snapshot
// applied" log lines). At the end the replica equals the second database and,
// stopped, its file has exactly that database's pages.
//
// Environment:
//   BOOMERANG_ISOLATION_READERS  reader processes (default 3)
//   BOOMERANG_ISOLATION_TXNS     transfer transactions applied while they read (default 3000)

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

import {
    BANK_QUERIES,
    assertReplicaSame,
    bankLoad,
    exec1,
    finishBankcheck,
    haveBinary,
    itest,
    makeClient,
    makeTmpDir,
    replicaCookieDelta,
    replicaStatus,
    rowsOf,
    scalar,
    setupBank,
    sqlqRows,
    startBankcheck,
    startPrimary,
    startReplica,
    testSeed,
    waitBankChecks,
    waitFor,
    waitReplicaAt,
    finishReadersAcrossSnapshot,
} from './helpers.js';

const READERS = Number(process.env.BOOMERANG_ISOLATION_READERS || 3);
const TXNS = Number(process.env.BOOMERANG_ISOLATION_TXNS || 3000);
const MIN_CHECKS = 1000; // per reader and per database: enough reads to mean something
const HOLD_MS = 20; // one more reader keeps each read transaction open this long, and reads twice
const MIN_HELD = 20; // its checks in each database
const MIN_DURING = 30; // reads, by all readers together, while the snapshot is being applied
const noTools = !process.env.BOOMERANG_BIN && !(haveBinary('boomerang-replica') && haveBinary('sqlq') && haveBinary('bankcheck'));

itest('readers never see a torn state while the replica applies transfers and takes a snapshot of another database', { timeout: 150000, skip: noTools ? 'no boomerang-replica, sqlq or bankcheck' : false }, async (t) => {
    const seed = testSeed();
    t.diagnostic(`seed ${seed} (rerun with BOOMERANG_SEED=${seed})`);
    const dir = makeTmpDir('boomerang-isolation-');
    const P1 = await startPrimary({ dir, db: path.join(dir, 'one.db') });
    const P2 = await startPrimary({ dir, db: path.join(dir, 'two.db') });
    const c1 = makeClient(P1.addr);
    const c2 = makeClient(P2.addr);
    const readers = [];
    let load = null;
    try {
        // Two databases with the same schema statements (so the same schema
        // cookie) but their tables at other root pages, with other totals,
        // and a seq in the second above anything the first reaches. The
        // second is smaller, so its snapshot also truncates the replica, and
        // it has auto_vacuum=FULL (pointer-map pages, pages moved at commit).
        const one = await setupBank(c1, { accounts: 1000, balance: 1000, padMiB: 14, autoVacuum: 'NONE' });
        const two = await setupBank(c2, { accounts: 777, balance: 3000, seq: 1e12, padMiB: 8, padFirst: true, autoVacuum: 'FULL' });
        const root = async (c) => rowsOf(await exec1(c, "SELECT name, rootpage FROM sqlite_schema WHERE name IN ('accounts', 'accounts_balance') ORDER BY name")).map((r) => `${r[0]}@${r[1]}`).join(' ');
        const [root1, root2] = [await root(c1), await root(c2)];
        assert.notEqual(root1, root2, 'the two databases keep accounts at other root pages');
        const [cookie1, cookie2] = [scalar(await exec1(c1, 'PRAGMA schema_version')), scalar(await exec1(c2, 'PRAGMA schema_version'))];
        t.diagnostic(`one: ${root1}; two: ${root2}; schema cookie ${cookie1}`);
        // A reader that cached one's schema must notice the change: the replica
        // has to move its cookie (replica/apply.c, "Schema cookies").
        assert.equal(cookie1, cookie2, 'both databases have the same schema cookie');

        const file = path.join(dir, 'r.db');
        let R = await startReplica(P1, file);
        await waitReplicaAt(R, c1, { what: 'the replica of database one' });

        for (let i = 0; i < READERS; i++) readers.push(await startBankcheck(file, [one, two]));
        const holder = await startBankcheck(file, [one, two], { holdMs: HOLD_MS });
        readers.push(holder); // the last one
        const fast = readers.slice(0, READERS);

        // Phase 1: the replica applies transfers (some over 256 pages) while the readers read.
        load = bankLoad(P1.addr, { seed, accounts: 1000, padRows: 14, padRate: 0.02 });
        await load.until(TXNS, 90000);
        const n1 = await load.stop();
        load = null;
        let st = await waitReplicaAt(R, c1, { timeoutMs: 60000, what: 'the replica after the transfers' });
        await assertReplicaSame(c1, R, st, BANK_QUERIES, 'database one');
        await waitBankChecks(fast, 0, MIN_CHECKS);
        await waitBankChecks([holder], 0, MIN_HELD);

        // Phase 2: the same replica file, pointed at database two while it takes
        // writes: the replica snapshots it (another history) under the readers.
        assert.equal((await R.stop()).code, 0, 'the replica exits 0 on SIGTERM');
        load = bankLoad(P2.addr, { seed: seed + 1, accounts: 777, padRows: 8, padRate: 0.02 });
        await load.until(50, 30000);
        R = await startReplica(P2, file);
        await waitFor(async () => (await replicaStatus(R)).snapshots >= 1, { timeoutMs: 60000, what: 'the snapshot of database two' });
        await load.until(load.committed() + 300, 60000); // and transactions after it, applied under the readers
        const n2 = await load.stop();
        load = null;
        st = await waitReplicaAt(R, c2, { timeoutMs: 60000, what: 'the replica of database two' });
        await waitBankChecks(fast, 1, MIN_CHECKS);
        await waitBankChecks([holder], 1, MIN_HELD);

        // Every reader: no violation, no error, many checks in each state, one
        // switch; and the readers were reading while the snapshot was applied.
        const sums = await finishReadersAcrossSnapshot(t, R, readers, MIN_DURING);
        for (const [i, r] of sums.entries()) {
            const min = i < READERS ? MIN_CHECKS : MIN_HELD;
            assert.ok(r.seen[0] >= min && r.seen[1] >= min, `reader ${i}: checks in each database: ${r.seen}`);
            assert.equal(r.transitions, 1, `reader ${i}: saw database one, then two, once`);
            assert.ok(r.seq_last >= 1e12, `reader ${i}: ends in database two (seq ${r.seq_last})`);
        }

        const s = await assertReplicaSame(c2, R, st, BANK_QUERIES, 'database two');
        assert.equal(s.snapshots, 1, 'one snapshot, of database two');
        assert.match(R.stderr(), /snapshot begins \(database id mismatch\)/);
        t.diagnostic(`${n1} transfer transactions on one, ${n2} on two; replica cookie delta ${replicaCookieDelta(file, s)}`);

        // Stopped cleanly, the replica file has just database two's pages: the
        // snapshot truncated what database one had beyond them.
        assert.equal((await R.stop()).code, 0, 'the replica exits 0 on SIGTERM');
        assert.equal(fs.statSync(file).size, st.db_pages * st.page_size, `the replica file after a clean stop (${st.db_pages} pages)`);
        assert.deepEqual(sqlqRows(file, 'PRAGMA integrity_check'), [['ok']]);
    } finally {
        if (load) await load.stop().catch(() => {});
        // Readers still running (a failure above): their findings, for the diagnosis.
        for (const h of readers) {
            const r = await finishBankcheck(h).catch((e) => ({ error: e.message }));
            t.diagnostic(`reader pid ${h.pid}: ${JSON.stringify({ ...r, timeline: undefined })}`);
        }
        c1.close();
        c2.close();
    }
});
