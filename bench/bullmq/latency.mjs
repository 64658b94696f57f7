// BullMQ's side of benchmark 2 (latency): with an idle Worker, N jobs added
// one at a time; for each, the time from add() to the Worker's `completed`.
// Prints one JSON line with p50/p99 in milliseconds.
//
//   node latency.mjs <redis-port> <n>
import { Queue, Worker } from "bullmq";

const [port, n] = process.argv.slice(2).map(Number);
const connection = { host: "127.0.0.1", port, maxRetriesPerRequest: null };
const name = `latency-${process.pid}`;
const queue = new Queue(name, { connection });
const latencies = [];
let completed = null;
const worker = new Worker(name, async () => {}, { connection, concurrency: 1 });
worker.on("completed", () => completed && completed(process.hrtime.bigint()));
await worker.waitUntilReady();
for (let i = 0; i < n; i++) {
  // One at a time, so the Worker is idle each time; the add's round trip is
  // part of the latency, as the clock starts before it.
  const finished = new Promise((resolve) => (completed = resolve));
  const before = process.hrtime.bigint();
  await queue.add("task", { i }, { removeOnComplete: true });
  latencies.push(Number((await finished) - before) / 1e6);
}
await worker.close();
await queue.obliterate({ force: true });
await queue.close();
latencies.sort((a, b) => a - b);
const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
console.log(JSON.stringify({ system: "bullmq", n, p50_ms: at(0.5), p99_ms: at(0.99), max_ms: latencies[latencies.length - 1] }));
