// Group commit under 64 concurrent connections: each client transaction stays
// atomic and independent of the others sharing its SQLite commit, including
// the ones that fail on purpose (UNIQUE, INSERT OR ROLLBACK, RAISE(ROLLBACK),
// CHECK in the 2nd statement of an ATOMIC batch). A ledger of every answered
// call is checked against the final database and the txids.

import assert from 'node:assert/strict';
import { after } from 'node:test';

import { exec1, itest, jsonReplacer, makeClient, okResults, rowsOf, scalar, startPrimary, stmt, stopAll } from './helpers.js';

const CLIENTS = 64;
const TX_PER_CLIENT = Number(process.env.BOOMERANG_GC_TX || 200);
const BUDGET_MS = Number(process.env.BOOMERANG_GC_BUDGET_MS || 150000);

after(() => stopAll(), { timeout: 30000 });

// One transaction of client ci, iteration k. Returns the request and what the
// ledger must expect of it.
function plan(ci, k) {
    const key = (s = '') => `c${ci}-${k}${s}`;
    const ins = (kk, v = 1) => stmt('INSERT INTO gc (k, client, v) VALUES (?, ?, ?)', [kk, BigInt(ci), BigInt(v)]);
    const bump = stmt('UPDATE counters SET n = n + 1 WHERE client = ?', [BigInt(ci)]);
    const dup = 'seed-dup';
    switch (k % 10) {
        case 0:
        case 2:
        case 4:
            return { kind: 'single', req: { statements: [ins(key())] }, present: [key()], absent: [], bump: 0 };
        case 1:
        case 3:
        case 5:
            return {
                kind: 'atomic',
                req: { mode: 'MODE_ATOMIC', statements: [ins(key('a')), bump, ins(key('b'))] },
                present: [key('a'), key('b')],
                absent: [],
                bump: 1,
            };
        case 6:
            return {
                kind: 'unique',
                req: { mode: 'MODE_ATOMIC', statements: [ins(key('x')), bump, ins(dup)] },
                present: [],
                absent: [key('x')],
                bump: 0,
                failAt: 2,
                code: 'SQLITE_CONSTRAINT_UNIQUE',
            };
        case 7:
            if (k % 30 === 7) {
                // AUTOCOMMIT, one statement: OR ROLLBACK ends the whole SQLite
                // transaction, which the other clients of its group share.
                return {
                    kind: 'autocommit-or-rollback',
                    req: { statements: [stmt('INSERT OR ROLLBACK INTO gc (k, client, v) VALUES (?, ?, 1)', [dup, BigInt(ci)])] },
                    present: [],
                    absent: [],
                    bump: 0,
                    failAt: 0,
                    code: 'SQLITE_CONSTRAINT_UNIQUE',
                };
            }
            if (k % 30 === 17) {
                // AUTOCOMMIT, two statements: each commits on its own, so the
                // first stays whatever the second's OR ROLLBACK does.
                return {
                    kind: 'autocommit2-or-rollback',
                    req: {
                        statements: [ins(key('p')), stmt('INSERT OR ROLLBACK INTO gc (k, client, v) VALUES (?, ?, 1)', [dup, BigInt(ci)])],
                    },
                    present: [key('p')],
                    absent: [],
                    bump: 0,
                    failAt: 1,
                    code: 'SQLITE_CONSTRAINT_UNIQUE',
                    commits: true,
                };
            }
            return {
                kind: 'or-rollback',
                req: {
                    mode: 'MODE_ATOMIC',
                    statements: [ins(key('x')), bump, stmt('INSERT OR ROLLBACK INTO gc (k, client, v) VALUES (?, ?, 1)', [dup, BigInt(ci)])],
                },
                present: [],
                absent: [key('x')],
                bump: 0,
                failAt: 2,
                code: 'SQLITE_CONSTRAINT_UNIQUE',
            };
        case 8:
            return {
                kind: 'raise-rollback',
                req: { mode: 'MODE_ATOMIC', statements: [ins(key('x')), bump, ins(key('y'), 666)] },
                present: [],
                absent: [key('x'), key('y')],
                bump: 0,
                failAt: 2,
                code: 'SQLITE_CONSTRAINT_TRIGGER',
            };
        default:
            return {
                kind: 'check',
                req: { mode: 'MODE_ATOMIC', statements: [ins(key('x')), ins(key('y'), -1), bump] },
                present: [],
                absent: [key('x'), key('y')],
                bump: 0,
                failAt: 1,
                code: 'SQLITE_CONSTRAINT_CHECK',
            };
    }
}

// Check one answer against its plan; returns a problem string or null.
function judge(p, res) {
    const errs = res.results.map((r) => r.error);
    if (p.failAt === undefined) {
        const bad = errs.findIndex((e) => e);
        if (bad >= 0) return `${p.kind}: statement ${bad} failed: ${errs[bad].code} ${errs[bad].message}`;
        if (BigInt(res.txid) === 0n) return `${p.kind}: committed but txid 0`;
        return null;
    }
    const e = errs[p.failAt];
    if (!e) return `${p.kind}: statement ${p.failAt} should fail with ${p.code}`;
    if (e.code !== p.code) return `${p.kind}: statement ${p.failAt}: ${e.code} (${e.message}), want ${p.code}`;
    if (p.commits) {
        const early = errs.slice(0, p.failAt).findIndex((x) => x);
        if (early >= 0) return `${p.kind}: statement ${early} failed: ${errs[early].message}`;
        if (BigInt(res.txid) === 0n) return `${p.kind}: first statement committed but txid 0`;
        return null;
    }
    if (res.txid !== '0') return `${p.kind}: failed batch got txid ${res.txid}`;
    const ran = errs.slice(p.failAt + 1).findIndex((x) => !x || x.code !== 'SKIPPED');
    if (ran >= 0) return `${p.kind}: statement ${p.failAt + 1 + ran} after the failure not SKIPPED`;
    return null;
}

itest('group commit keeps 64 clients\' transactions atomic and independent', { timeout: BUDGET_MS + 120000 }, async (t) => {
    const P = await startPrimary();
    const setup = makeClient(P.addr);
    okResults(
        await setup.execute({
            mode: 'MODE_ATOMIC',
            statements: [
                'CREATE TABLE gc (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE, client INTEGER, v INTEGER CHECK (v >= 0))',
                "CREATE TRIGGER gc_boom BEFORE INSERT ON gc WHEN NEW.v = 666 BEGIN SELECT RAISE(ROLLBACK, 'boom'); END",
                'CREATE TABLE counters (client INTEGER PRIMARY KEY, n INTEGER NOT NULL)',
                'WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < 63) INSERT INTO counters SELECT i, 0 FROM s',
                "INSERT INTO gc (k, client, v) VALUES ('seed-dup', -1, 0)",
            ],
        }),
    );
    const h0 = BigInt((await setup.status()).head_txid);

    const clients = Array.from({ length: CLIENTS }, () => makeClient(P.addr));
    await Promise.all(clients.map((cl) => cl.ready(10000)));
    const ledger = [];
    const transport = [];
    const deadline = Date.now() + BUDGET_MS;
    const started = Date.now();
    await Promise.all(
        clients.map(async (cl, ci) => {
            for (let k = 0; k < TX_PER_CLIENT && Date.now() < deadline; k++) {
                const p = plan(ci, k);
                try {
                    const res = await cl.execute(p.req, { deadlineMs: 30000 });
                    ledger.push({ ci, k, p, res, problem: judge(p, res) });
                } catch (e) {
                    // An unanswered call leaves its outcome unknown: stop this client.
                    transport.push(`client ${ci} tx ${k} (${p.kind}): ${e.code} ${e.details || e.message}`);
                    return;
                }
            }
        }),
    );
    const elapsed = Date.now() - started;
    t.diagnostic(`${ledger.length} transactions from ${CLIENTS} clients in ${elapsed} ms`);
    for (const cl of clients) cl.close();

    assert.deepEqual(transport, [], 'every call is answered');
    assert.ok(ledger.length >= CLIENTS * Math.min(TX_PER_CLIENT, 20), `only ${ledger.length} transactions within ${BUDGET_MS} ms`);
    const problems = ledger.filter((l) => l.problem).map((l) => `client ${l.ci} tx ${l.k}: ${l.problem}`);
    assert.deepEqual(problems.slice(0, 20), [], `${problems.length} answers differ from the plan`);

    // Rows: every committed transaction's rows exactly once, no failed one's.
    const rows = rowsOf(await exec1(setup, 'SELECT k, count(*) FROM gc GROUP BY k', [], { deadlineMs: 30000 }));
    const have = new Map(rows.map(([k, n]) => [k, n]));
    const want = new Set(['seed-dup']);
    const missing = [];
    const ghosts = [];
    for (const l of ledger) {
        for (const k of l.p.present) {
            want.add(k);
            if (have.get(k) !== 1n) missing.push(`${k} (${l.p.kind}) count ${have.get(k) ?? 0}`);
        }
        for (const k of l.p.absent) if (have.has(k)) ghosts.push(`${k} (${l.p.kind}, failed)`);
    }
    assert.deepEqual(missing.slice(0, 20), [], `${missing.length} committed rows missing`);
    assert.deepEqual(ghosts.slice(0, 20), [], `${ghosts.length} rows of failed transactions present`);
    const extra = [...have.keys()].filter((k) => !want.has(k));
    assert.deepEqual(extra.slice(0, 20), [], `${extra.length} rows nobody committed`);

    // Counters: each successful ATOMIC bump applied exactly once, failed ones never.
    const bumps = new Array(CLIENTS).fill(0n);
    for (const l of ledger) if (!l.problem && l.p.failAt === undefined) bumps[l.ci] += BigInt(l.p.bump);
    const counters = rowsOf(await exec1(setup, 'SELECT client, n FROM counters ORDER BY client'));
    assert.deepEqual(counters.map(([, n]) => n), bumps, 'per-client counters');

    // Txids: the distinct txids of successful writes are exactly h0+1..head,
    // since every commit of this run carried some client's answered write.
    const h1 = BigInt((await setup.status()).head_txid);
    const okWrites = ledger.filter((l) => l.p.failAt === undefined || l.p.commits);
    const txids = new Set(okWrites.map((l) => BigInt(l.res.txid)));
    const sorted = [...txids].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const headBehind = ledger.filter((l) => BigInt(l.res.head_txid) < BigInt(l.res.txid));
    assert.equal(headBehind.length, 0, `responses with head_txid < txid: ${JSON.stringify(headBehind[0]?.res, jsonReplacer)}`);
    const txProblems = [];
    if (sorted[0] !== h0 + 1n) txProblems.push(`first txid of the run ${sorted[0]}, head before it ${h0}`);
    if (sorted[sorted.length - 1] !== h1) txProblems.push(`last answered txid ${sorted[sorted.length - 1]}, Status.head_txid ${h1}`);
    const gaps = [];
    for (let i = 1; i < sorted.length; i++) {
        if (sorted[i] !== sorted[i - 1] + 1n) gaps.push(`${sorted[i - 1]}..${sorted[i]}`);
    }
    if (gaps.length) txProblems.push(`${gaps.length} gaps: ${gaps.slice(0, 10).join(' ')}`);
    if (BigInt(txids.size) !== h1 - h0) txProblems.push(`${txids.size} answered txids for ${h1 - h0} commits`);
    // Every commit of this run carried some client's successful write, so
    // the answered txids must be exactly h0+1..head.
    assert.deepEqual(txProblems, [], 'commits that no client was told about');

    // Grouping happened: fewer commits than successful writes.
    t.diagnostic(`${okWrites.length} successful writes in ${txids.size} commits`);
    assert.ok(txids.size < okWrites.length, `no grouping: ${okWrites.length} writes, ${txids.size} commits`);

    assert.equal(scalar(await exec1(setup, 'PRAGMA integrity_check')), 'ok');
    setup.close();
    const st = await P.stop();
    assert.equal(st.code, 0, 'SIGTERM exits 0');
});
