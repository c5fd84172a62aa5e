// Drizzle ORM (drizzle-orm/libsql 0.45.4, on @libsql/client 0.18) against
// the sidecar: CRUD with insert ... returning, a transaction with a nested
// savepoint rolled back, a transaction rolled back as a whole, db.batch, and
// the migrator on a migrations folder the test writes (research/hrana.md §2).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before } from 'node:test';

import { createClient } from '@libsql/client';
import { and, asc, eq, gt, sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/libsql';
import { migrate } from 'drizzle-orm/libsql/migrator';
import { blob, integer, real, sqliteTable, text } from 'drizzle-orm/sqlite-core';

import { itest, makeTmpDir, metricValue, skipNoProxy, startPrimary, startProxy, stopAll } from './helpers.js';

const skip = skipNoProxy() ? 'no boomerang-proxy (set BOOMERANG_BIN)' : undefined;
const opts = (timeout = 60000) => ({ timeout, ...(skip ? { skip } : {}) });

const users = sqliteTable('users', {
    id: integer('id').primaryKey({ autoIncrement: true }),
    name: text('name').notNull().unique(),
    karma: integer('karma').notNull().default(0),
    ratio: real('ratio'),
    avatar: blob('avatar', { mode: 'buffer' }),
});

const posts = sqliteTable('posts', {
    id: integer('id').primaryKey(),
    userId: integer('user_id')
        .notNull()
        .references(() => users.id),
    title: text('title').notNull(),
});

let P;
let S;
let client;
let db;

before(async () => {
    if (skip) return;
    P = await startPrimary();
    S = await startProxy({ primaryUrl: P });
    await S.waitReady();
    client = createClient({ url: S.url });
    db = drizzle({ client });
    await db.run(sql`CREATE TABLE users (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        karma INTEGER NOT NULL DEFAULT 0,
        ratio REAL,
        avatar BLOB)`);
    await db.run(sql`CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id), title TEXT NOT NULL)`);
});

after(async () => {
    if (client) client.close();
    await stopAll();
});

itest('CRUD: insert ... returning, select, update ... returning, delete', opts(), async () => {
    const inserted = await db
        .insert(users)
        .values([
            { name: 'ann', karma: 5, ratio: 0.5, avatar: Buffer.from([1, 2, 3]) },
            { name: 'bob', karma: 1 },
        ])
        .returning();
    assert.equal(inserted.length, 2);
    assert.equal(inserted[0].name, 'ann');
    assert.ok(Buffer.from(inserted[0].avatar).equals(Buffer.from([1, 2, 3])));
    assert.equal(inserted[1].ratio, null);
    assert.ok(inserted[1].id > inserted[0].id);

    const one = await db.insert(users).values({ name: 'cy' }).returning({ id: users.id, karma: users.karma });
    assert.deepEqual(Object.keys(one[0]).sort(), ['id', 'karma']);
    assert.equal(one[0].karma, 0, 'the column default, from the primary');

    // Read back at once through the same sidecar (no headers): read-your-writes.
    let rows = await db.select().from(users).orderBy(asc(users.id));
    assert.deepEqual(
        rows.map((r) => [r.name, r.karma]),
        [
            ['ann', 5],
            ['bob', 1],
            ['cy', 0],
        ],
    );
    rows = await db
        .select({ name: users.name })
        .from(users)
        .where(and(gt(users.karma, 0), eq(users.name, 'bob')));
    assert.deepEqual(rows, [{ name: 'bob' }]);

    const updated = await db
        .update(users)
        .set({ karma: sql`${users.karma} + 10` })
        .where(eq(users.name, 'bob'))
        .returning({ karma: users.karma });
    assert.deepEqual(updated, [{ karma: 11 }]);
    const got = await db.select({ karma: users.karma }).from(users).where(eq(users.name, 'bob')).get();
    assert.deepEqual(got, { karma: 11 });

    const res = await db.delete(users).where(eq(users.name, 'cy'));
    assert.equal(res.rowsAffected, 1);
    const n = await db.select({ n: sql`count(*)` }).from(users).get();
    assert.equal(Number(n.n), 2);

    // A unique violation surfaces with the SQLite code (drizzle wraps the LibsqlError).
    await assert.rejects(db.insert(users).values({ name: 'ann' }), (e) => {
        const root = e.cause || e;
        assert.equal(root.code, 'SQLITE_CONSTRAINT', `${e.message}`);
        return true;
    });
});

itest('db.transaction: commit, a nested savepoint rolled back, and a whole rollback', opts(), async () => {
    const [u] = await db.insert(users).values({ name: 'tx-owner' }).returning();
    const before = await S.metrics();
    await db.transaction(async (tx) => {
        await tx.insert(posts).values({ id: 100, userId: u.id, title: 'outer' });
        await assert.rejects(
            tx.transaction(async (tx2) => {
                await tx2.insert(posts).values({ id: 101, userId: u.id, title: 'inner' });
                const inner = await tx2.select().from(posts).where(eq(posts.id, 101));
                assert.equal(inner.length, 1, 'the savepoint sees its own insert');
                tx2.rollback();
            }),
            /Rollback/i,
        );
        await tx.transaction(async (tx3) => {
            await tx3.insert(posts).values({ id: 102, userId: u.id, title: 'kept' });
        });
        const seen = await tx.select({ id: posts.id }).from(posts).orderBy(asc(posts.id));
        assert.deepEqual(seen.map((r) => r.id), [100, 102], 'inside the transaction after the savepoint rollback');
    });
    let ids = (await db.select({ id: posts.id }).from(posts).orderBy(asc(posts.id))).map((r) => r.id);
    assert.deepEqual(ids, [100, 102], 'committed: the outer insert and the released savepoint, not the rolled back one');
    const after1 = await S.metrics();
    assert.ok(
        metricValue(after1, 'boomerang_proxy_writes_total') > metricValue(before, 'boomerang_proxy_writes_total'),
        'the transaction went to the primary',
    );

    await assert.rejects(
        db.transaction(async (tx) => {
            await tx.insert(posts).values({ id: 200, userId: u.id, title: 'doomed' });
            await tx.update(users).set({ karma: 999 }).where(eq(users.id, u.id));
            tx.rollback();
        }),
        /Rollback/i,
    );
    ids = (await db.select({ id: posts.id }).from(posts).orderBy(asc(posts.id))).map((r) => r.id);
    assert.deepEqual(ids, [100, 102], 'the rolled back transaction left nothing');
    const k = await db.select({ karma: users.karma }).from(users).where(eq(users.id, u.id)).get();
    assert.equal(k.karma, 0);

    // An error thrown inside the callback rolls back too.
    await assert.rejects(
        db.transaction(async (tx) => {
            await tx.insert(posts).values({ id: 300, userId: u.id, title: 'thrown' });
            throw new Error('app failure');
        }),
        /app failure/,
    );
    const n = await db.select({ n: sql`count(*)` }).from(posts).where(eq(posts.id, 300)).get();
    assert.equal(Number(n.n), 0);
});

itest('db.batch: mixed writes and reads, one atomic batch', opts(), async () => {
    const [a, b, c] = await db.batch([
        db.insert(users).values({ name: 'batch-1', karma: 3 }).returning({ id: users.id }),
        db.insert(users).values({ name: 'batch-2', karma: 4 }).returning({ id: users.id }),
        db.select({ s: sql`sum(${users.karma})` }).from(users).where(sql`${users.name} LIKE 'batch-%'`),
    ]);
    assert.equal(a.length, 1);
    assert.equal(b.length, 1);
    assert.equal(Number(c[0].s), 7, 'the batch reads its own writes');
    // A failing statement rolls the whole batch back.
    await assert.rejects(
        db.batch([db.insert(users).values({ name: 'batch-3' }), db.insert(users).values({ name: 'batch-1' })]),
        (e) => {
            assert.equal((e.cause || e).code, 'SQLITE_CONSTRAINT', e.message);
            return true;
        },
    );
    const n = await db.select({ n: sql`count(*)` }).from(users).where(eq(users.name, 'batch-3')).get();
    assert.equal(Number(n.n), 0);
});

itest('the drizzle migrator applies a migrations folder once', opts(), async () => {
    const dir = makeTmpDir('boomerang-drizzle-');
    const folder = path.join(dir, 'drizzle');
    fs.mkdirSync(path.join(folder, 'meta'), { recursive: true });
    const journal = {
        version: '7',
        dialect: 'sqlite',
        entries: [
            { idx: 0, version: '6', when: 1700000000000, tag: '0000_init', breakpoints: true },
            { idx: 1, version: '6', when: 1700000001000, tag: '0001_more', breakpoints: true },
        ],
    };
    fs.writeFileSync(path.join(folder, 'meta', '_journal.json'), JSON.stringify(journal));
    fs.writeFileSync(
        path.join(folder, '0000_init.sql'),
        'CREATE TABLE `tags` (\n\t`id` integer PRIMARY KEY NOT NULL,\n\t`label` text NOT NULL\n);\n--> statement-breakpoint\nCREATE UNIQUE INDEX `tags_label_unique` ON `tags` (`label`);',
    );
    fs.writeFileSync(path.join(folder, '0001_more.sql'), "ALTER TABLE `tags` ADD `weight` integer DEFAULT 1 NOT NULL;\n--> statement-breakpoint\nINSERT INTO `tags` (`id`, `label`) VALUES (1, 'seed');");
    await migrate(db, { migrationsFolder: folder });
    let rows = await db.all(sql`SELECT id, label, weight FROM tags`);
    assert.deepEqual(rows.map((r) => [r.id, r.label, r.weight]), [[1, 'seed', 1]]);
    let applied = await db.all(sql`SELECT hash FROM __drizzle_migrations`);
    assert.equal(applied.length, 2);
    // Again: nothing to do, nothing duplicated.
    await migrate(db, { migrationsFolder: folder });
    applied = await db.all(sql`SELECT hash FROM __drizzle_migrations`);
    assert.equal(applied.length, 2);
    rows = await db.all(sql`SELECT count(*) AS n FROM tags`);
    assert.equal(Number(rows[0].n), 1);
    const idx = await db.all(sql`SELECT name FROM sqlite_schema WHERE type = 'index' AND name = 'tags_label_unique'`);
    assert.equal(idx.length, 1);
});
