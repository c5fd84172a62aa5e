// One primary per database: a second boomerang-primary on the same file must
// refuse to start (two writers would commit frames that capture never sees),
// and a bad --listen is refused before the database is touched.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

import { itest, startPrimary, makeClient, exec1, rowsOf, makeTmpDir, spawnTracked, binPath, withDeadline } from './helpers.js';

itest('a second primary on the same database refuses to start and the first keeps serving', async () => {
    const p1 = await startPrimary();
    const c = makeClient(p1.addr);
    await exec1(c, 'CREATE TABLE t (x)');
    const second = spawnTracked(binPath(), ['--db', p1.db, '--listen', '127.0.0.1:0']);
    const st = await withDeadline(second.exited, 10000, 'second primary exit');
    assert.equal(st.code, 1, 'the second primary exits with status 1');
    assert.match(second.stderr(), /another boomerang-primary is serving this database/);
    assert.doesNotMatch(second.stderr(), /listening on/);
    await exec1(c, 'INSERT INTO t VALUES (1)');
    assert.deepEqual(rowsOf(await exec1(c, 'SELECT x FROM t')), [[1n]]);
    c.close();
    await p1.stop();
    // Once the first is gone, the database is free again.
    const p2 = await startPrimary({ db: p1.db });
    const c2 = makeClient(p2.addr);
    assert.deepEqual(rowsOf(await exec1(c2, 'SELECT x FROM t')), [[1n]]);
    c2.close();
    await p2.stop();
});

itest('a malformed --listen is refused before the database is created', async () => {
    const dir = makeTmpDir();
    const db = path.join(dir, 'never.db');
    const p = spawnTracked(binPath(), ['--db', db, '--listen', 'nonsense']);
    const st = await withDeadline(p.exited, 10000, 'primary exit');
    assert.equal(st.code, 2);
    assert.match(p.stderr(), /--listen 'nonsense' is not HOST:PORT/);
    assert.equal(fs.existsSync(db), false, 'no database file was created');
});
