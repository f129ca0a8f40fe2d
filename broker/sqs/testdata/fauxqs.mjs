// Starts the fauxqs SQS emulator on the loopback interface for sluice's tests.
//
// fauxqs's own command line listens on 0.0.0.0; this launcher builds the same
// app and listens on 127.0.0.1 only.
//
//	node fauxqs.mjs [port]
//
// Port 0 (the default) picks a free port. Once listening, the launcher prints
// one line, "listening http://127.0.0.1:PORT", to stdout. It exits when its
// stdin closes (so it never outlives the process that started it) or on
// SIGTERM/SIGINT.
import { buildApp } from "fauxqs";

const port = Number(process.argv[2] ?? "0");
const app = buildApp({ logger: false });
const address = await app.listen({ host: "127.0.0.1", port });
// Node closes idle keep-alive connections after 5s; a client reusing one just
// as it closes loses the response (for a receive, its messages stay invisible
// until their visibility timeout). Keep idle connections longer than the
// SDK's clients do.
app.server.keepAliveTimeout = 120_000;
app.server.headersTimeout = 121_000;
process.stdout.write(`listening ${address}\n`);

let closing = false;
async function stop() {
  if (closing) return;
  closing = true;
  await app.close();
  process.exit(0);
}
process.stdin.on("end", stop);
process.stdin.on("error", stop);
process.stdin.resume();
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
