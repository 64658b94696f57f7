// BullMQ's side of benchmark 1 (queue throughput): N jobs added with addBulk
// in batches of 1,000, then processed by one Worker with a no-op processor
// at the given concurrency, removeOnComplete. Prints one JSON line.
//
//   node throughput.mjs <redis-port> <n> <concurrency>
import { Queue, Worker } from "bullmq";
import IORedis from "ioredis";

const [port, n, concurrency] = process.argv.slice(2).map(Number);
const connection = { host: "127.0.0.1", port, maxRetriesPerRequest: null };
const name = `bench-${process.pid}`;
const redis = new IORedis(connection);

async function redisCpu() {
  const info = await redis.info("cpu");
  const field = (key) => Number(info.match(new RegExp(`${key}:([0-9.]+)`))[1]);
  return field("used_cpu_sys") + field("used_cpu_user");
}

const queue = new Queue(name, { connection });
const cpuBefore = await redisCpu();
const clientBefore = process.cpuUsage();
const started = process.hrtime.bigint();
for (let offset = 0; offset < n; offset += 1000) {
  const batch = [];
  for (let i = offset; i < Math.min(n, offset + 1000); i++) {
    batch.push({ name: "task", data: { i }, opts: { removeOnComplete: true } });
  }
  await queue.addBulk(batch);
}
const added = process.hrtime.bigint();
let done = 0;
const finished = new Promise((resolve) => {
  const worker = new Worker(name, async () => {}, { connection, concurrency, autorun: true });
  worker.on("completed", () => {
    done += 1;
    if (done === n) resolve(worker);
  });
});
const worker = await finished;
const ended = process.hrtime.bigint();
const cpuAfter = await redisCpu();
const client = process.cpuUsage(clientBefore);
await worker.close();
await queue.obliterate({ force: true });
await queue.close();
await redis.quit();
const seconds = Number(ended - started) / 1e9;
console.log(JSON.stringify({
  system: "bullmq",
  n,
  concurrency,
  add_seconds: Number(added - started) / 1e9,
  total_seconds: seconds,
  tasks_per_second: n / seconds,
  redis_cpu_seconds: cpuAfter - cpuBefore,
  client_cpu_seconds: (client.user + client.system) / 1e6,
}));
