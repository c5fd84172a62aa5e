// The demo app of one region: every INTERVAL_MS it inserts a note through its
// sidecar, reads the note back with the write's Boomerang-Token (read-your-writes:
// it must be there), and logs both latencies and how many notes each region has.
// It speaks Hrana over HTTP (JSON) with Node's built-in fetch, so it needs no npm
// install; an app of your own would use @libsql/client with the same URL.
//
//   node app.mjs            run the loop
//   node app.mjs "SQL"      run one statement through the sidecar, print the rows, exit
//
// Environment: BOOMERANG_URL (http://127.0.0.1:8080), REGION (demo),
// APP_TOKEN_FILE (the sidecar's --app-token-file; none: no Authorization), INTERVAL_MS (2000).
import { readFileSync } from "node:fs";

const url = (process.env.BOOMERANG_URL ?? "http://127.0.0.1:8080").replace(/\/$/, "");
const region = process.env.REGION ?? "demo";
const interval = Number(process.env.INTERVAL_MS ?? 2000);
const tokenFile = process.env.APP_TOKEN_FILE;
const auth = tokenFile ? { authorization: `Bearer ${readFileSync(tokenFile, "utf8").split("\n")[0].trim()}` } : {};

// One Hrana pipeline of execute requests; returns their results and the answer's token.
async function run(stmts, headers = {}) {
    const requests = stmts.map((stmt) => ({ type: "execute", stmt })).concat({ type: "close" });
    const res = await fetch(`${url}/v2/pipeline`, {
        method: "POST",
        headers: { "content-type": "application/json", ...auth, ...headers },
        body: JSON.stringify({ requests }),
    });
    if (!res.ok) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
    const body = await res.json();
    const failed = body.results.find((r) => r.type === "error");
    if (failed) throw new Error(`${failed.error.code ?? "error"}: ${failed.error.message}`);
    return { results: body.results.slice(0, -1).map((r) => r.response.result), token: res.headers.get("boomerang-token") };
}

const text = (value) => ({ type: "text", value: String(value) });
const integer = (value) => ({ type: "integer", value: String(value) });
const plain = (v) => (v.type === "null" ? null : v.type === "blob" ? v.base64 : v.value);
const ms = (t0) => (Number(process.hrtime.bigint() - t0) / 1e6).toFixed(1);

async function tick(n) {
    let t0 = process.hrtime.bigint();
    const w = await run([{ sql: "INSERT INTO notes(region, body) VALUES (?, ?)", args: [text(region), text(`note ${n}`)] }]);
    const id = w.results[0].last_insert_rowid;
    const writeMs = ms(t0);
    t0 = process.hrtime.bigint();
    const r = await run(
        [
            { sql: "SELECT count(*) FROM notes WHERE id = ?", args: [integer(id)] },
            { sql: "SELECT region, count(*) FROM notes GROUP BY region ORDER BY region" },
        ],
        { "boomerang-token": w.token },
    );
    const seen = r.results[0].rows[0][0].value === "1";
    const counts = r.results[1].rows.map(([reg, c]) => `${plain(reg)}: ${plain(c)}`).join(", ");
    console.log(`${region}: insert id ${id} acked in ${writeMs} ms; read back in ${ms(t0)} ms: ` +
        `${seen ? "seen" : "MISSING (read-your-writes violated)"}; notes by region {${counts}}`);
}

if (process.argv[2]) {
    const { results } = await run([{ sql: process.argv[2] }]);
    console.log(JSON.stringify({ cols: results[0].cols.map((c) => c.name), rows: results[0].rows.map((row) => row.map(plain)) }));
} else {
    await run([{ sql: "CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, region TEXT NOT NULL, body TEXT NOT NULL)" }]);
    console.log(`${region}: talking to ${url}`);
    for (let n = 1; ; n++) {
        await tick(n).catch((e) => console.log(`${region}: ${e.message}`));
        await new Promise((resolve) => setTimeout(resolve, interval));
    }
}
