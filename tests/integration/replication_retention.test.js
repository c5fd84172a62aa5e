// A replica far behind retention gets a snapshot while readers are active
// (issue 3). The primary keeps 1 MiB of replication log; the replica is
// stopped (SIGTERM) while the primary takes several MiB of writes, so its
// position is pruned from the log; then it restarts, under reader processes
// (bankcheck) that hold the bank invariant on every read, one of them
// holding each read transaction open and reading twice. It must ask to
// resume, get a snapshot ("behind retention"), say so in its log, /v1/status
// and /metrics, converge exactly (checksum, rows, integrity_check), and no
// reader may see a torn or older state; their timelines show that they read
// while the snapshot was applied (DESIGN.md, replication contract 3, 5).
//
// Environment:
//   BOOMERANG_RETENTION_READERS  reader processes (default 3)
//   BOOMERANG_RETENTION_MIB      MiB written while the replica is down (default 8)

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
    httpGetPort,
    itest,
    makeClient,
    makeTmpDir,
    replicaStatus,
    scalar,
    setupBank,
    startBankcheck,
    startPrimary,
    startReplica,
    testSeed,
    waitBankChecks,
    waitFor,
    waitReplicaAt,
    finishReadersAcrossSnapshot,
} from './helpers.js';

const READERS = Number(process.env.BOOMERANG_RETENTION_READERS || 3);
const DOWN_MIB = Number(process.env.BOOMERANG_RETENTION_MIB || 8);
const MIN_CHECKS = 1000; // per reader
const HOLD_MS = 20; // one more reader keeps each read transaction open this long, and reads twice
const MIN_HELD = 20; // its checks
const MIN_DURING = 30; // reads, by all readers together, while the snapshot is being applied
const noTools = !process.env.BOOMERANG_BIN && !(haveBinary('boomerang-replica') && haveBinary('sqlq') && haveBinary('bankcheck'));

/** The first txid the primary's log still holds: its oldest segment is named by it, in hex. */
function oldestLogged(P) {
    const names = fs.readdirSync(`${P.db}-boomerang/log`).filter((n) => n.endsWith('.log'));
    assert.ok(names.length > 0, 'the primary has log segments');
    return Math.min(...names.map((n) => parseInt(n, 16)));
}

itest('a replica far behind retention takes a snapshot under active readers and converges', { timeout: 120000, skip: noTools ? 'no boomerang-replica, sqlq or bankcheck' : false }, async (t) => {
    const seed = testSeed();
    t.diagnostic(`seed ${seed} (rerun with BOOMERANG_SEED=${seed})`);
    const dir = makeTmpDir('boomerang-retention-');
    const P = await startPrimary({ dir, args: ['--log-retain-mb', '1'] });
    const c = makeClient(P.addr);
    const readers = [];
    let load = null;
    try {
        const bank = await setupBank(c, { accounts: 1000, balance: 5000, padMiB: 6, autoVacuum: 'INCREMENTAL' });
        const file = path.join(dir, 'r.db');
        let R = await startReplica(P, file);
        await waitReplicaAt(R, c, { what: 'the first snapshot' });
        assert.equal((await replicaStatus(R)).snapshots, 1, 'a new replica starts from a snapshot');
        for (let i = 0; i < READERS; i++) readers.push(await startBankcheck(file, [bank]));
        const holder = await startBankcheck(file, [bank], { holdMs: HOLD_MS });
        readers.push(holder); // the last one
        const fast = readers.slice(0, READERS);

        // Live for a while, then down while the primary takes DOWN_MIB MiB of writes.
        load = bankLoad(P.addr, { seed, accounts: 1000, padRows: 6, padRate: 0.02 });
        await load.until(500, 60000);
        assert.equal((await R.stop()).code, 0, 'the replica exits 0 on SIGTERM');
        const stoppedAt = Number(/replication link stopped at txid (\d+)/.exec(R.stderr())?.[1]);
        assert.ok(stoppedAt > 0, `the replica logs where it stopped\n${R.tail()}`);
        let written = 0;
        let id = 0;
        await waitFor(
            async () => {
                await exec1(c, 'UPDATE pad SET data = randomblob(1024 * 1024) WHERE id = ?', [BigInt(1 + (id++ % 6))]);
                written += 1024 * 1024;
                return written >= DOWN_MIB * 1024 * 1024 && oldestLogged(P) > stoppedAt + 1;
            },
            { timeoutMs: 60000, what: `the log to be pruned past txid ${stoppedAt}` },
        );
        const st0 = await c.status();
        t.diagnostic(`replica stopped at txid ${stoppedAt}; ${written / 1048576} MiB written; the log now starts at txid ${oldestLogged(P)}, head ${st0.head_txid}`);

        // Restart it, still under load and under the readers: a snapshot.
        R = await startReplica(P, file);
        await waitFor(async () => (await replicaStatus(R)).snapshots >= 1, { timeoutMs: 60000, what: 'the snapshot' });
        assert.match(R.stderr(), new RegExp(`resuming after txid ${stoppedAt}\\b`), 'it asked to resume from its position');
        assert.match(R.stderr(), /snapshot begins \(behind retention\)/);
        await load.until(load.committed() + 300, 60000); // and transactions after it
        const n = await load.stop();
        load = null;
        const st = await waitReplicaAt(R, c, { timeoutMs: 60000, what: 'the replica after its snapshot' });
        await waitBankChecks(fast, 0, MIN_CHECKS);
        await waitBankChecks([holder], 0, MIN_HELD);

        // The readers: no violation, no error, and reading while the snapshot was applied.
        const seq = Number(scalar(await exec1(c, 'SELECT seq FROM bank_meta WHERE id = 1')));
        const sums = await finishReadersAcrossSnapshot(t, R, readers, MIN_DURING);
        for (const [i, r] of sums.entries()) {
            assert.ok(r.checks >= (i < READERS ? MIN_CHECKS : MIN_HELD), `reader ${i}: ${r.checks} checks`);
            assert.equal(r.transitions, 0);
            assert.equal(r.seq_last, seq, `reader ${i}: ends at the primary's last transfer`);
        }

        const s = await assertReplicaSame(c, R, st, BANK_QUERIES, 'after the snapshot');
        assert.equal(s.snapshots, 1, 'exactly one snapshot');
        assert.equal(s.checksum_mismatches, 0);
        assert.equal(s.apply_errors, 0);
        assert.ok(s.txns > 0, 'it applied transactions after the snapshot');
        const metrics = await httpGetPort(R.httpPort, '/metrics');
        assert.equal(metrics.status, 200);
        assert.match(metrics.body, /^boomerang_replica_snapshots_applied_total 1$/m);
        assert.match(metrics.body, new RegExp(`^boomerang_replica_applied_txid ${st.head_txid}$`, 'm'));
        t.diagnostic(`${n} transfer transactions; after the restart ${s.txns} transactions and ${s.snapshots} snapshot applied`);
    } finally {
        if (load) await load.stop().catch(() => {});
        // Readers still running (a failure above): their findings, for the diagnosis.
        for (const h of readers) {
            const r = await finishBankcheck(h).catch((e) => ({ error: e.message }));
            t.diagnostic(`reader pid ${h.pid}: ${JSON.stringify({ ...r, timeline: undefined })}`);
        }
        c.close();
    }
});
