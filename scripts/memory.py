#!/usr/bin/env python3
"""Resident memory and CPU of a Warren worker: idle, and while draining a backlog.

    scripts/memory.py AMQP_URL [--warren .build/release/warren] [--jobs 20000]
    scripts/memory.py AMQP_URL --embedded Examples/TypedHandlers/.build/release/OrdersWorker

The first form runs `warren serve` with an http handler answered at once by a local endpoint; the
second runs the TypedHandlers example (Warren embedded as a library) with its `orders.total` job.
Each gets a queue of its own. RSS and PSS come from /proc/PID/smaps_rollup once the worker consumes
and has been idle a while; then the backlog is published (pika, as docs/wire-format.md shows) and
sampled every 50 ms until the queue is empty; CPU is the worker's user and system time for the
drain. Needs python3 with pika. Everything it starts it stops, and it deletes the queue's broker queues
and its temporary folder. PSS divides shared libraries' pages among the processes that map them, so
it is lower on a machine where other Swift processes run.
"""
import argparse, http.server, json, os, shutil, signal, subprocess, sys, tempfile, threading, time, uuid

import pika


def rollup(pid):
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    return fields


class Answer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle's algorithm and the client's
    # delayed ACK hold each answer about 40 ms.
    disable_nagle_algorithm = True

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_consuming(channel, queue, worker, deadline):
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            sys.exit(f"the worker exited with status {worker.returncode}")
        try:
            if channel.queue_declare(queue=queue, passive=True).method.consumer_count > 0:
                return
        except pika.exceptions.ChannelClosedByBroker:
            channel = channel.connection.channel()  # not declared yet
        time.sleep(0.1)
    sys.exit("the worker did not start consuming")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--warren", default=".build/release/warren")
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--embedded", help="the TypedHandlers example's OrdersWorker instead of warren serve")
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    args = parser.parse_args()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    queue = f"memory-{uuid.uuid4().hex[:8]}"
    folder = tempfile.mkdtemp(prefix="warren-memory-")
    handlers = os.path.join(folder, "handlers.yaml")
    with open(handlers, "w") as f:
        f.write("handlers:\n  noop:\n    http:\n"
                f"      url: http://127.0.0.1:{server.server_address[1]}/\n")
    env = dict(os.environ, WARREN_BROKER_URL=args.url, WARREN_QUEUE_NAME=queue,
               WARREN_HANDLERS_FILE=handlers, WARREN_LOG_LEVEL="warning",
               WARREN_HTTP_ADDRESS=f"127.0.0.1:{20000 + os.getpid() % 20000}")
    if args.embedded:
        command, name, body = [args.embedded], "orders.total", json.dumps({"items": [{"sku": "a", "cents": 250, "count": 2}]})
    else:
        command, name, body = [args.warren, "serve"], "noop", json.dumps({"n": 1})
    print(f"queue {queue}", file=sys.stderr)
    worker = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    connection = None
    try:
        connection = pika.BlockingConnection(pika.URLParameters(args.url))
        channel = connection.channel()
        wait_consuming(channel, f"{queue}.normal", worker, time.monotonic() + 30)
        channel = connection.channel()
        time.sleep(args.idle_seconds)
        idle = rollup(worker.pid)
        cpu_before = cpu_seconds(worker.pid)

        for _ in range(args.jobs):
            channel.basic_publish(
                exchange="warren", routing_key=f"{queue}.normal", body=body,
                properties=pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                                message_id=str(uuid.uuid4()), type=name))
        peak = dict(idle)
        started = time.monotonic()
        while time.monotonic() - started < 300:
            sample = rollup(worker.pid)
            for key in ("Rss", "Pss"):
                peak[key] = max(peak[key], sample[key])
            if channel.queue_declare(queue=f"{queue}.normal", passive=True).method.message_count == 0:
                break
            time.sleep(0.05)
        # The jobs taken last are still running: done once the worker's CPU time stays flat.
        previous = cpu_seconds(worker.pid)
        while time.monotonic() - started < 300:
            time.sleep(0.3)
            sample = rollup(worker.pid)
            for key in ("Rss", "Pss"):
                peak[key] = max(peak[key], sample[key])
            now = cpu_seconds(worker.pid)
            if now - previous < 0.02:
                break
            previous = now
        cpu = previous - cpu_before

        def mib(kb):
            return f"{kb / 1024:.1f} MiB"
        print(f"{'':16} {'RSS':>10} {'PSS':>10} {'anonymous':>10}")
        print(f"{'idle':16} {mib(idle['Rss']):>10} {mib(idle['Pss']):>10} {mib(idle['Anonymous']):>10}")
        print(f"{'drain peak':16} {mib(peak['Rss']):>10} {mib(peak['Pss']):>10}")
        elapsed = time.monotonic() - started
        print(f"drain: {elapsed:.1f} s ({args.jobs / elapsed:.0f} jobs/s, publishing included); "
              f"the worker's CPU {cpu:.2f} s, {cpu / args.jobs * 1e6:.0f} µs per job")
        libraries = subprocess.run(["grep", "-o", "lib[A-Za-z_]*Foundation[A-Za-z_]*\\.so", f"/proc/{worker.pid}/maps"],
                                   capture_output=True, text=True).stdout.split()
        print("Foundation libraries mapped:", ", ".join(sorted(set(libraries))) or "none")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        if connection is not None and connection.is_open:
            # The queue's broker queues (the delay cascade is shared by every queue and stays).
            channel = connection.channel()
            for suffix in ("critical", "high", "normal", "low", "background", "dead"):
                channel.queue_delete(queue=f"{queue}.{suffix}")
            connection.close()
        server.shutdown()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
