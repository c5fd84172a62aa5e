// The primary's operator endpoints over HTTP/1.1: on the gRPC port itself
// (told apart from HTTP/2 by the first bytes) and on --metrics-listen.
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';

import { itest, startPrimary, makeClient, exec1, waitFor } from './helpers.js';

function get(port, path) {
    return new Promise((resolve, reject) => {
        const req = http.get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
            let body = '';
            res.setEncoding('utf8');
            res.on('data', (d) => (body += d));
            res.on('end', () => resolve({ status: res.statusCode, type: res.headers['content-type'], body }));
        });
        req.on('error', reject);
        req.setTimeout(5000, () => req.destroy(new Error(`GET ${path}: no answer`)));
    });
}

function freePort() {
    return new Promise((resolve, reject) => {
        const srv = net.createServer();
        srv.listen(0, '127.0.0.1', () => {
            const { port } = srv.address();
            srv.close(() => resolve(port));
        });
        srv.on('error', reject);
    });
}

function metric(text, name) {
    const m = new RegExp(`^${name} ([0-9.e+-]+)$`, 'm').exec(text);
    return m ? Number(m[1]) : undefined;
}

itest('/health, /metrics and /v1/status answer on the gRPC port and on --metrics-listen', async () => {
    const mport = await freePort();
    const p = await startPrimary({ args: ['--metrics-listen', `127.0.0.1:${mport}`] });
    const c = makeClient(p.addr);
    await exec1(c, 'CREATE TABLE t (x)');
    const writes = [];
    for (let i = 0; i < 32; i++) writes.push(exec1(c, 'INSERT INTO t VALUES (?)', [i]));
    await Promise.all(writes);
    const head = Number((await c.status()).head_txid); // group commit: fewer commits than writes
    assert.ok(head >= 2 && head <= 33);

    for (const port of [p.port, mport]) {
        const h = await get(port, '/health');
        assert.equal(h.status, 200);
        assert.equal(h.body, 'ok\n');
        const m = await get(port, '/metrics');
        assert.equal(m.status, 200);
        assert.match(m.type, /^text\/plain; version=0\.0\.4/);
        assert.equal(metric(m.body, 'boomerang_primary_head_txid'), head);
        assert.equal(metric(m.body, 'boomerang_primary_commits_total'), head, 'one commit per txid');
        assert.equal(metric(m.body, 'boomerang_primary_commit_requests_count'), head);
        assert.equal(metric(m.body, 'boomerang_primary_requests_total'), 33);
        assert.equal(metric(m.body, 'boomerang_primary_commit_requests_sum'), 33, 'every write is in some commit');
        assert.ok(metric(m.body, 'boomerang_primary_log_bytes') > 0);
        assert.equal(metric(m.body, 'boomerang_primary_subscribers'), 0);
        const s = await get(port, '/v1/status');
        assert.equal(s.status, 200);
        assert.equal(s.type, 'application/json');
        const st = JSON.parse(s.body);
        assert.equal(st.head_txid, head);
        assert.match(st.database_id, /^[0-9a-f]{32}$/);
        const nf = await get(port, '/nope');
        assert.equal(nf.status, 404);
        assert.equal(nf.type, 'application/json');
        assert.ok(JSON.parse(nf.body).message);
    }
    // gRPC still works on the same port after HTTP/1.1 connections came and went.
    await exec1(c, 'INSERT INTO t VALUES (99)');
    await waitFor(async () => metric((await get(p.port, '/metrics')).body, 'boomerang_primary_head_txid') === head + 1, {
        what: 'the new head in /metrics',
    });
    c.close();
    await p.stop();
});
