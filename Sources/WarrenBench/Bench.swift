import ArgumentParser
import Foundation
import Synchronization
import Warren
import WarrenAMQP
import WarrenIO
import WarrenRedis

@main
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warren-bench",
        abstract: "Measure the in-memory engine (queue operations, end-to-end jobs, critical-job start latency), or with --amqp-url Warren against a bare rabbitmq-c loop on a RabbitMQ.")

    @Option(help: "Jobs for the queue-operation run (in-memory).") var operations = 1_000_000
    @Option(help: "Jobs for the end-to-end run (in-memory).") var jobs = 200_000
    @Option(help: "Workers for the end-to-end run (in-memory).") var concurrency = 16
    @Option(help: "Critical jobs measured for start latency (in-memory).") var criticalSamples = 200
    @Option(help: "Measure against this RabbitMQ (amqp://…) instead of the in-memory engine: the raw rabbitmq-c ceiling and Warren side by side.")
    var amqpURL: String?
    @Option(help: "Messages per AMQP run.") var amqpMessages = 20_000
    @Option(help: "Rounds of the raw loop and Warren (in turn first); the median ratio is reported.") var amqpRounds = 15
    @Option(help: "Queue type of both the raw loop's queue and Warren's: classic or quorum.") var amqpQueueType = "classic"
    @Option(help: "Prefetch of the raw loop's consumer and of each of Warren's, 1 to 65535.") var amqpPrefetch = 10_000
    @Flag(help: "The raw loop drains a plain queue (no arguments, messages without id or type) instead of one declared and filled as Warren's.")
    var amqpPlainCeiling = false
    @Flag(help: "Only Warren's drains, each round on its own (no raw loop, no events or latency run): to profile Warren.")
    var amqpWarrenOnly = false
    @Option(help: "With --amqp-url: compare Warren without and with the job-state store on this Redis (redis://…), side by side.")
    var redisURL: String?
    @Option(help: "With --amqp-url, when RabbitMQ runs on this machine: its process id (beam.smp), to print the broker's CPU time per message next to each drain's.")
    var amqpBrokerPID: Int?

    func validate() throws {
        let counts = [
            ("--operations", operations), ("--jobs", jobs), ("--concurrency", concurrency), ("--critical-samples", criticalSamples),
            ("--amqp-messages", amqpMessages), ("--amqp-rounds", amqpRounds),
        ]
        for (flag, value) in counts where value < 1 { throw ValidationError("\(flag) must be 1 or more") }
        guard QueueType(rawValue: amqpQueueType) != nil else { throw ValidationError("--amqp-queue-type must be classic or quorum") }
        guard (1...Int(UInt16.max)).contains(amqpPrefetch) else { throw ValidationError("--amqp-prefetch must be 1 to \(UInt16.max)") }
        if redisURL != nil, amqpURL == nil { throw ValidationError("--redis-url goes with --amqp-url") }
        if let amqpBrokerPID {
            guard amqpURL != nil else { throw ValidationError("--amqp-broker-pid goes with --amqp-url") }
            guard (1...Int(Int32.max)).contains(amqpBrokerPID) else { throw ValidationError("--amqp-broker-pid must be a process id from 1 to \(Int32.max)") }
            let process = ProcessCPU(pid: amqpBrokerPID)
            guard process.seconds() != nil else {
                throw ValidationError("--amqp-broker-pid \(amqpBrokerPID): no CPU time in /proc/\(amqpBrokerPID)/stat (no such process on this machine?)")
            }
            // RabbitMQ runs in the Erlang VM, beam.smp.
            guard let command = process.command, command.hasPrefix("beam") else {
                throw ValidationError("--amqp-broker-pid \(amqpBrokerPID) is '\(process.command ?? "?")', not a RabbitMQ node (beam.smp)")
            }
        }
    }

    /// The broker's process, for its CPU time, when its id was given.
    var brokerProcess: ProcessCPU? { amqpBrokerPID.map { ProcessCPU(pid: $0) } }

    var queueType: QueueType { QueueType(rawValue: amqpQueueType) ?? .classic }
    var prefetch: UInt16 { UInt16(clamping: amqpPrefetch) }

    func run() async throws {
        if let amqpURL {
            let url = try AMQPURL(amqpURL)
            let claim = try AMQPBenchmarks.claim(url: url)
            defer { claim.close() }
            if let redisURL {
                try await store(url: url, redis: try RedisURL(redisURL), count: amqpMessages, rounds: amqpRounds)
            } else {
                try await amqp(url: url, count: amqpMessages, rounds: amqpRounds)
            }
            return
        }
        say("warren bench — in-memory engine, \(ProcessInfo.processInfo.activeProcessorCount) cores")
        let ops = queueOperations(count: operations)
        say(String(format: "queue operations (enqueue+dequeue+ack, one thread): %10.0f jobs/s  (%.0f ops/s)", ops, ops * 3))
        let e2e = try await endToEnd(count: jobs, concurrency: concurrency)
        say(String(format: "end-to-end no-op jobs through the worker pool:      %10.0f jobs/s  (concurrency %d)", e2e, concurrency))
        let latency = try await criticalLatency(samples: criticalSamples)
        say(String(format: "critical start latency, 10,000 low jobs waiting:    p50 %.3f ms  p99 %.3f ms  max %.3f ms",
                     latency.p50 * 1e3, latency.p99 * 1e3, latency.max * 1e3))
    }

    /// The raw consume-and-ack loop and Warren, each draining `count` no-op messages of ~100
    /// bytes from the same broker, one right after the other, `rounds` times: this machine's
    /// speed swings between runs, so each round's ratio is printed and the median is the figure.
    /// The two take turns going first (whichever goes second finds the broker still busy with
    /// the first one's queue), and the raw loop drains a queue declared and filled as Warren's
    /// (the delivery limit and at-least-once dead-lettering cost the broker time on every message:
    /// that is the broker's price for Warren's safety, not Warren's).
    func amqp(url: AMQPURL, count: Int, rounds: Int) async throws {
        say("warren bench — RabbitMQ at \(url.host):\(url.port), \(queueType.rawValue) queues, \(count) messages per run, \(Self.counted(rounds, "round")), prefetch \(prefetch), "
              + (amqpPlainCeiling ? "the raw loop on a plain queue" : "the raw loop on a queue declared as Warren's")
              + "; this process may run on CPUs \(ProcessCPU.allowedCPUs) (of \(ProcessInfo.processInfo.processorCount))")
        if amqpWarrenOnly {
            for round in 1...rounds {
                let warren = try await warrenDrain(url: url, count: count, events: false)
                say(String(format: "round %d: Warren, no-op jobs, events off %6.0f jobs/s, %.2f µs CPU per job%@", round, warren.rate, warren.cpu * 1e6,
                             Self.brokerNote(warren.brokerCPU)))
            }
            return
        }
        var ratios: [Double] = [], warrenCPU: [Double] = [], rawCPU: [Double] = [], brokerCPU: (raw: [Double], warren: [Double]) = ([], [])
        for round in 1...rounds {
            let warrenFirst = round % 2 == 0
            let first = warrenFirst ? try await warrenDrain(url: url, count: count, events: false) : nil
            let (raw, published) = try await ceiling(url: url, count: count)
            if round == 1 { say(String(format: "publish with confirms (window 1,000): %.0f msg/s", published)) }
            let warren = if let first { first } else { try await warrenDrain(url: url, count: count, events: false) }
            ratios.append(warren.rate / raw.rate)
            warrenCPU.append(warren.cpu)
            rawCPU.append(raw.cpu)
            if let rawBroker = raw.brokerCPU, let warrenBroker = warren.brokerCPU {
                brokerCPU.raw.append(rawBroker)
                brokerCPU.warren.append(warrenBroker)
            }
            say(String(format: "round %d: ceiling (raw rabbitmq-c consume + multiple ack) %6.0f msg/s, %.1f µs CPU per message%@%@;",
                         round, raw.rate, raw.cpu * 1e6, Self.brokerNote(raw.brokerCPU), warrenFirst ? " (Warren first)" : ""))
            say(String(format: "         Warren, no-op jobs, events off             %6.0f jobs/s, %.1f µs CPU per job%@: %.2f× the ceiling",
                         warren.rate, warren.cpu * 1e6, Self.brokerNote(warren.brokerCPU), warren.rate / raw.rate))
        }
        say(String(format: "Warren / ceiling, median of %@: %.2f×  (CPU per job %.1f µs, raw loop %.1f µs per message)",
                     Self.counted(rounds, "round"), median(ratios), median(warrenCPU) * 1e6, median(rawCPU) * 1e6))
        if !brokerCPU.raw.isEmpty {
            say(String(format: "the broker's CPU per message, medians: %.1f µs serving the raw loop, %.1f µs serving Warren",
                         median(brokerCPU.raw) * 1e6, median(brokerCPU.warren) * 1e6))
        }
        // Lifecycle events on: one more publish per job.
        let (ceiling, _) = try await ceiling(url: url, count: count)
        let warren = try await warrenDrain(url: url, count: count, events: true)
        say(String(format: "Warren, events on: %.0f jobs/s, %.1f µs CPU per job: %.2f× a ceiling of %.0f msg/s measured just before",
                     warren.rate, warren.cpu * 1e6, warren.rate / ceiling.rate, ceiling.rate))
        try await latency(url: url, rate: 1_000, seconds: 5)
    }

    /// Warren draining `count` no-op jobs without and then with the job-state store, `rounds`
    /// times: each round's rates, the ratio, and the store's round trips and commands per job.
    func store(url: AMQPURL, redis: RedisURL, count: Int, rounds: Int) async throws {
        say("warren bench — job-state store on Redis \(redis.host):\(redis.port), RabbitMQ at \(url.host):\(url.port), "
              + "\(queueType.rawValue) queues, \(count) no-op jobs per run, \(Self.counted(rounds, "round")), prefetch \(prefetch)")
        let client = RedisClient(url: redis, name: "warren-bench")
        try await client.waitUntilConnected(within: .seconds(5))
        func commandsProcessed() async throws -> Int {
            let info = try await client.command(RedisCommand("INFO", "stats")).text ?? ""
            let line = info.split(whereSeparator: \.isNewline).first { $0.hasPrefix("total_commands_processed:") }
            return line.flatMap { Int($0.dropFirst("total_commands_processed:".count)) } ?? 0
        }
        var ratios: [Double] = []
        for round in 1...rounds {
            let off = try await warrenDrain(url: url, count: count, events: false)
            let store = RedisJobStore(client: client, configuration: .init(queue: "warren-bench", instance: "bench"))
            let (tripsBefore, commandsBefore) = (client.roundTrips, try await commandsProcessed())
            let on = try await warrenDrain(url: url, count: count, events: false, store: store)
            // Less the INFO call itself.
            let trips = Double(client.roundTrips - tripsBefore - 1) / Double(count)
            let commands = Double(try await commandsProcessed() - commandsBefore - 1) / Double(count)
            ratios.append(on.rate / off.rate)
            say(String(format: "round %d: store off %6.0f jobs/s, %.1f µs CPU a job; store on %6.0f jobs/s, %.1f µs CPU, %.3f round trips and %.2f commands a job: %.2f×",
                         round, off.rate, off.cpu * 1e6, on.rate, on.cpu * 1e6, trips, commands, on.rate / off.rate))
        }
        say(String(format: "store on / store off, median of %@: %.2f×", Self.counted(rounds, "round"), median(ratios)))
        await client.close()
    }

    static let benchBody = Array(#"{"n":0,"padding":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#.utf8)

    /// Fills a queue with persistent ~100-byte JSON messages and drains it with the raw rabbitmq-c
    /// loop: messages per second, the loop thread's CPU seconds per message, and how fast the
    /// queue was filled. The queue is the normal-priority queue of a Warren queue of its own,
    /// filled with the messages Warren's drain gets (with `--amqp-plain-ceiling`, a queue without
    /// arguments and messages without id or type).
    func ceiling(url: AMQPURL, count: Int) async throws -> (drain: Drain, published: Double) {
        let name = "warren-bench-ceiling-\(queueType.rawValue)"
        let queue: String, exchange: String, properties: MessageProperties
        if amqpPlainCeiling {
            try AMQPBenchmarks.prepare(url: url, queue: name, type: queueType)
            (queue, exchange, properties) = (name, "", MessageProperties(contentType: "application/json", deliveryMode: 2))
        } else {
            let topology = Topology(queue: name, queueType: queueType)
            try AMQPBenchmarks.prepare(url: url, topology: topology)
            (queue, exchange, properties) = (topology.brokerQueue(.normal), Topology.exchange, Self.jobProperties)
        }
        let published = try AMQPBenchmarks.fill(
            url: url, exchange: exchange, routingKey: queue, count: count, properties: properties, body: { _ in Self.benchBody })
        let brokerBefore = brokerProcess?.seconds()
        let (rate, cpu) = try AMQPBenchmarks.rawDrain(url: url, queue: queue, count: count, prefetch: prefetch)
        return (Drain(rate: rate, cpu: cpu, brokerCPU: brokerCPU(since: brokerBefore, count: count)), published)
    }

    /// A no-op job's message, as Warren's drains get them (`fill` numbers the id): ids of each
    /// fill's own, as a store remembers the last run's as completed.
    static var jobProperties: MessageProperties {
        MessageProperties(
            contentType: "application/json", deliveryMode: 2, messageID: "bench-\(UInt64.random(in: 0...UInt64.max))", type: "noop")
    }

    /// Fills Warren's normal queue with the same messages as no-op jobs and drains it through a
    /// worker pool: jobs per second and the whole process's CPU seconds per job.
    func warrenDrain(url: AMQPURL, count: Int, events: Bool, store: (any JobStateStore)? = nil) async throws -> Drain {
        let name = queueType == .classic ? "warren-bench" : "warren-bench-\(queueType.rawValue)"
        let topology = Topology(queue: name, queueType: queueType)
        try AMQPBenchmarks.prepare(url: url, topology: topology)
        var configuration = AMQPBroker.Configuration(url: url, queue: name, queueType: queueType, prefetch: prefetch)
        configuration.publishesEvents = events
        configuration.stateStore = store
        // Connected before the fill, so consumption starts as soon after it as the raw loop's does:
        // how fast RabbitMQ serves a freshly filled queue depends on how long ago it was filled.
        let broker = AMQPBroker(configuration)
        try await broker.waitUntilReady()
        _ = try AMQPBenchmarks.fill(
            url: url, exchange: Topology.exchange, routingKey: topology.routingKey(.normal), count: count,
            properties: Self.jobProperties, body: { _ in Self.benchBody })
        let done = Latch(count)
        // Timed from the first job's start, as the raw loop is timed from its first message; the
        // count of jobs run tells the watchdog below whether the drain moves.
        let progress = Mutex<(firstStart: ContinuousClock.Instant?, ran: Int)>((nil, 0))
        var registry = HandlerRegistry()
        try registry.registerRaw("noop") { _, _ in
            progress.withLock { progress in
                if progress.firstStart == nil { progress.firstStart = .now }
                progress.ran += 1
            }
            done.countDown()
            return Data()
        }
        // Gives up (releasing `done`) when no job has run for the stall limit.
        let stalled = Mutex(false)
        let watchdog = Task {
            var (seen, since) = (0, ContinuousClock.now)
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(500))
                let now = progress.withLock { $0.ran }
                if now != seen {
                    (seen, since) = (now, .now)
                } else if ContinuousClock.now - since >= AMQPBenchmarks.stallLimit {
                    stalled.withLock { $0 = true }
                    done.add(-count)
                    return
                }
            }
        }
        let cpuBefore = AMQPBenchmarks.cpuSeconds(), brokerBefore = brokerProcess?.seconds()
        let finished = await drain(broker, registry, concurrency: 32, until: done).finished
        watchdog.cancel()
        if stalled.withLock({ $0 }) {
            await broker.close()
            throw AMQPBenchmarks.Stalled(queue: topology.brokerQueue(.normal), received: progress.withLock { $0.ran }, expected: count)
        }
        let cpu = AMQPBenchmarks.cpuSeconds() - cpuBefore
        let brokerCPU = brokerCPU(since: brokerBefore, count: count)
        await broker.close()
        let elapsed = finished - (progress.withLock { $0.firstStart } ?? finished)
        return Drain(rate: Double(count) / elapsed.timeInterval, cpu: cpu / Double(count), brokerCPU: brokerCPU)
    }

    /// One drain: messages per second, the bench process's CPU seconds per message and, when the
    /// broker's process id was given, the broker's.
    struct Drain {
        var rate: Double
        var cpu: Double
        var brokerCPU: Double?
    }

    func brokerCPU(since before: Double?, count: Int) -> Double? {
        guard let before, let after = brokerProcess?.seconds() else { return nil }
        return (after - before) / Double(count)
    }

    /// "1 round", "15 rounds".
    static func counted(_ count: Int, _ noun: String) -> String { "\(count) \(noun)\(count == 1 ? "" : "s")" }

    static func brokerNote(_ seconds: Double?) -> String {
        seconds.map { String(format: " (broker %.1f µs)", $0 * 1e6) } ?? ""
    }

    func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }

    /// Publishes jobs at `rate` per second from a second connection and measures the time from
    /// publish to the handler's start.
    func latency(url: AMQPURL, rate: Int, seconds: Int) async throws {
        let broker = AMQPBroker(AMQPBroker.Configuration(url: url, queue: "warren-bench-latency", prefetch: 100))
        let producer = AMQPBroker(AMQPBroker.Configuration(url: url, queue: "warren-bench-latency"))
        try await broker.waitUntilReady()
        try await producer.waitUntilReady()
        let total = rate * seconds
        let samples = Mutex<[Double]>([])
        let done = Latch(total)
        var registry = HandlerRegistry()
        try registry.registerRaw("stamp") { payload, _ in
            let now = DispatchTime.now().uptimeNanoseconds
            let sent = UInt64(String(decoding: payload, as: UTF8.self)) ?? now
            samples.withLock { $0.append(Double(now &- sent) / 1e9) }
            done.countDown()
            return Data()
        }
        let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 16))
        let runner = Task { await pool.run() }
        _ = await broker.tryNext(DeliveryFilter(rooms: []))  // start consuming before the clock runs
        try await Task.sleep(for: .milliseconds(200))
        let start = ContinuousClock.now
        for index in 0..<total {
            let due = start + .nanoseconds(Int64(index) * 1_000_000_000 / Int64(rate))
            if due > .now { try await Task.sleep(until: due, clock: .continuous) }
            let stamp = Data(String(DispatchTime.now().uptimeNanoseconds).utf8)
            try await producer.enqueue([Job(name: "stamp", payload: stamp, maxRetries: 0)])
        }
        await done.wait()
        pool.shutdown()
        await runner.value
        await broker.close()
        await producer.close()
        let sorted = samples.withLock { $0 }.sorted()
        func at(_ q: Double) -> Double { sorted[min(sorted.count - 1, Int(Double(sorted.count) * q))] * 1e3 }
        say(String(format: "publish → handler start at %d jobs/s (%d jobs):  p50 %.2f ms  p99 %.2f ms  max %.2f ms",
                     rate, total, at(0.5), at(0.99), sorted.last! * 1e3))
    }

    /// Enqueue, dequeue and ack every job on one thread, straight on the queue core. The jobs come
    /// from a ring of 20,000 prepared ones: an id recurs only after it has left the 10,000-job
    /// dedup window, so every enqueue is accepted and the producer's cost stays out of the figure.
    func queueOperations(count: Int) -> Double {
        let batch = 1_000
        let ring = (0..<20 * batch).map { Job(id: JobID("j\($0)"), name: "noop", priority: JobPriority(rawValue: $0 % 5)!) }
        var core = JobQueueCore(configuration: QueueConfiguration(capacity: batch * 2, finishedWindow: 10 * batch, dedupWindow: 10 * batch))
        let empty = Data()
        let clock = ContinuousClock()
        // Whole batches: `count` rounded up to a multiple of 1,000.
        var done = 0
        let elapsed = clock.measure {
            while done < count {
                let now = Date()
                let start = done % ring.count
                for job in ring[start..<start + batch] { try! core.enqueue(job, now: now) }
                while let job = core.dequeue(now: now) { core.settle(job.id, .completed(empty), now: now) }
                done += batch
            }
        }
        precondition(core.statistics().completed == done, "every job must complete")
        return Double(done) / elapsed.timeInterval
    }

    /// Pre-fills the broker, then drains it through a worker pool with a no-op handler.
    func endToEnd(count: Int, concurrency: Int) async throws -> Double {
        let broker = InMemoryBroker(configuration: QueueConfiguration(capacity: count, finishedWindow: 10_000))
        let done = Latch(count)
        var registry = HandlerRegistry()
        try registry.registerRaw("noop") { _, _ in
            done.countDown()
            return Data()
        }
        let jobs = (0..<count).map { Job(id: JobID("e\($0)"), name: "noop") }
        for start in stride(from: 0, to: count, by: 10_000) {
            try await broker.enqueue(Array(jobs[start..<min(count, start + 10_000)]))
        }
        let (started, finished) = await drain(broker, registry, concurrency: concurrency, until: done)
        let elapsed = finished - started
        let stats = await broker.statistics()
        precondition(stats.completed == count, "every job must complete, got \(stats.completed)")
        return Double(count) / elapsed.timeInterval
    }

    /// Runs a worker pool over `broker` until `done` is released: when it started and when `done` was reached.
    func drain(_ broker: any Broker, _ registry: HandlerRegistry, concurrency: Int, until done: Latch) async
        -> (started: ContinuousClock.Instant, finished: ContinuousClock.Instant)
    {
        let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: concurrency))
        let started = ContinuousClock.now
        let runner = Task { await pool.run() }
        await done.wait()
        let finished = ContinuousClock.now
        pool.shutdown()
        await runner.value
        return (started, finished)
    }

    /// Every ordinary slot runs a long low job and 10,000 more wait; a critical job is submitted and
    /// the time to its handler's start is measured, through one reserved slot.
    func criticalLatency(samples: Int) async throws -> (p50: Double, p99: Double, max: Double) {
        let broker = InMemoryBroker()
        let queue = JobQueue(broker: broker)
        let release = Latch(1)
        let startedAt = Mutex<[JobID: ContinuousClock.Instant]>([:])
        var registry = HandlerRegistry()
        try registry.registerRaw("long") { _, _ in
            await release.wait()
            return Data()
        }
        try registry.registerRaw("urgent") { _, context in
            let now = ContinuousClock.now
            startedAt.withLock { $0[context.id] = now }
            return Data()
        }
        let pool = WorkerPool(
            broker: broker, registry: registry,
            configuration: WorkerPoolConfiguration(concurrency: 4, reservedForCritical: 1))
        let runner = Task { await pool.run() }
        try await queue.submit(batch: (0..<10_004).map { _ in Job(name: "long", priority: .low) })
        while pool.running < 4 { await Task.yield() }
        var latencies: [Double] = []
        for _ in 0..<samples {
            let job = Job(name: "urgent", priority: .critical)
            let submitted = ContinuousClock.now
            let handle = try await queue.submit(job)
            _ = try await handle.result()
            let began = startedAt.withLock { $0[job.id]! }
            latencies.append((began - submitted).timeInterval)
        }
        let stats = await broker.statistics()
        precondition(stats.depthByPriority[.low] == 10_000, "the low jobs must still wait")
        release.countDown()
        pool.shutdown()
        await queue.broker.close()
        await runner.value
        latencies.sort()
        return (latencies[latencies.count / 2], latencies[Int(Double(latencies.count) * 0.99)], latencies.last!)
    }
}

/// CPU time of a process on this machine, from `/proc`.
struct ProcessCPU {
    let pid: Int

    /// User and system CPU seconds used so far by all of the process's threads, or nil when the
    /// process cannot be read.
    func seconds() -> Double? {
        guard let pid = Int32(exactly: pid), let used = ProcessStat(pid: pid)?.cpuTicks else { return nil }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        return ticks > 0 ? used / ticks : nil
    }

    /// The process's command name (`comm`), or nil when the process cannot be read.
    var command: String? {
        (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The CPUs this process may run on, as the kernel lists them ("0-1", "1").
    static var allowedCPUs: String {
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }
        return line.map { $0.dropFirst("Cpus_allowed_list:".count).trimmingCharacters(in: .whitespaces) } ?? "?"
    }
}

/// Writes a line to standard output at once, also into a pipe or a file (where `print` buffers
/// until exit, and a run takes minutes).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
