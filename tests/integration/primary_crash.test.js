// kill -9 the primary under write load, restart it on the same database, and
// check that no answered write was lost (DESIGN.md replication contract 1, 2).

import assert from 'node:assert/strict';
import path from 'node:path';
import { after } from 'node:test';

import {
    exec1,
    itest,
    makeClient,
    makeTmpDir,
    okResults,
    pause,
    rng,
    rowsOf,
    scalar,
    startPrimary,
    stmt,
    stopAll,
    testSeed,
    withDeadline,
} from './helpers.js';

const ROUNDS = Number(process.env.BOOMERANG_CRASH_ROUNDS || 10);
const CLIENTS = 16;

after(() => stopAll(), { timeout: 30000 });

itest(`kill -9 under load, ${ROUNDS} rounds: no answered write is lost`, { timeout: 60000 + ROUNDS * 30000 }, async (t) => {
    const seed = testSeed();
    t.diagnostic(`seed ${seed} (rerun with BOOMERANG_SEED=${seed})`);
    const rand = rng(seed);
    const db = path.join(makeTmpDir('boomerang-crash-'), 'crash.db');

    let P = await startPrimary({ db });
    let c = makeClient(P.addr);
    const created = await c.execute({ statements: ['CREATE TABLE crash (k TEXT PRIMARY KEY, round INTEGER, pad BLOB)'] });
    okResults(created);
    assert.equal(created.txid, '1');
    const first = await c.status();
    let maxTxid = 1n; // largest txid answered so far
    const answered = []; // keys of every write that got an OK answer
    const unanswered = []; // key groups whose outcome is unknown (all or none may be present)
    let answeredInLoad = 0;

    for (let round = 0; round < ROUNDS; round++) {
        c.close();
        const clients = Array.from({ length: CLIENTS }, () => makeClient(P.addr));
        const load = clients.map(async (cl, ci) => {
            for (let n = 0; ; n++) {
                const base = `r${round}-c${ci}-${n}`;
                const pad = Buffer.alloc(Math.floor(rand() * 6000), ci);
                const keys = n % 3 === 2 ? [`${base}a`, `${base}b`] : [base];
                const req = {
                    mode: keys.length > 1 ? 'MODE_ATOMIC' : 'MODE_AUTOCOMMIT',
                    statements: keys.map((k) => stmt('INSERT INTO crash VALUES (?, ?, ?)', [k, BigInt(round), pad])),
                };
                let res;
                try {
                    res = await cl.execute(req, { deadlineMs: 10000 });
                } catch {
                    unanswered.push(keys);
                    return;
                }
                okResults(res); // a statement error here is a bug, not the crash
                assert.notEqual(res.txid, '0', `write ${base} answered without a txid`);
                answered.push(...keys);
                answeredInLoad++;
                const txid = BigInt(res.txid);
                if (txid > maxTxid) maxTxid = txid;
            }
        });
        const delayMs = 50 + Math.floor(rand() * 350);
        await pause(delayMs); // random kill delay: the crash lands at an arbitrary point of the load
        await P.kill9();
        await withDeadline(Promise.all(load), 20000, `round ${round}: clients to notice the crash`);
        for (const cl of clients) cl.close();

        P = await startPrimary({ db });
        c = makeClient(P.addr);
        await check(round, delayMs);
    }

    async function check(round, delayMs) {
        const ctx = `round ${round} (kill after ${delayMs} ms)`;
        const st = await c.status();
        const head = BigInt(st.head_txid);
        assert.equal(st.database_id, first.database_id, `${ctx}: database_id changed`);
        assert.equal(st.epoch, first.epoch, `${ctx}: epoch bumped by a crash recovery with continuous history`);
        assert.ok(head >= maxTxid, `${ctx}: head_txid ${head} < largest answered txid ${maxTxid}`);
        assert.equal(scalar(await exec1(c, 'PRAGMA integrity_check')), 'ok', `${ctx}: integrity_check`);

        const present = new Set(rowsOf(await exec1(c, 'SELECT k FROM crash', [], { deadlineMs: 30000 })).map(([k]) => k));
        const lost = answered.filter((k) => !present.has(k));
        assert.deepEqual(lost.slice(0, 20), [], `${ctx}: ${lost.length} answered writes lost`);
        const torn = unanswered.filter((g) => g.length > 1 && present.has(g[0]) !== present.has(g[1]));
        assert.deepEqual(torn.slice(0, 5), [], `${ctx}: ATOMIC pairs half-applied`);

        // The next write continues the history without a gap.
        const w = await c.execute({ statements: [stmt('INSERT INTO crash VALUES (?, ?, NULL)', [`probe-${round}`, BigInt(round)])] });
        okResults(w);
        assert.equal(BigInt(w.txid), head + 1n, `${ctx}: first write after restart got txid ${w.txid}, head was ${head}`);
        answered.push(`probe-${round}`);
        maxTxid = BigInt(w.txid);
    }

    t.diagnostic(`${answeredInLoad} writes answered under load, ${unanswered.length} unanswered`);
    assert.ok(answeredInLoad > 0, 'the load got some writes answered before the kills');
    c.close();
    const st = await P.stop();
    assert.equal(st.code, 0, 'SIGTERM exits 0');
    // One last clean start: everything is still there.
    P = await startPrimary({ db });
    c = makeClient(P.addr);
    const count = scalar(await exec1(c, 'SELECT count(*) FROM crash'));
    assert.ok(count >= BigInt(answered.length), `after a clean restart ${count} rows < ${answered.length} answered`);
    assert.equal(BigInt((await c.status()).head_txid), maxTxid, 'SIGTERM drains: head is the last answered txid');
    c.close();
});
