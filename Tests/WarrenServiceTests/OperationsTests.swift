import Foundation
import Testing
import Warren
@testable import WarrenAMQP
@testable import WarrenService
#if canImport(Glibc)
import Glibc
#endif

/// `warren serve` as a process on the test broker: the operations endpoints, the metrics, and the
/// command-line tools with their exit codes.
@Suite("operations")
struct OperationsTests {
    static let handlers = """
    handlers:
      always.fails:
        exec:
          command: [/bin/sh, -c, "echo out of stock >&2; exit 1"]
        retries: 1
        backoff: { base: 100ms, max: 100ms }
      slow.job:
        exec:
          command: [/bin/sh, -c, "sleep 3; cat"]
        timeout: 30s
    """

    /// A `warren serve` on `queue` with `handlers`; its operations server's base URL.
    static func serve(
        queue: String, handlers: String, broker: String? = nil, adding extra: [String: String] = [:]
    ) async throws -> (ChildProcess, String, [String: String]) {
        let dir = try makeTemporaryDirectory()
        try handlers.write(toFile: dir + "/handlers.yaml", atomically: false, encoding: .utf8)
        let environment = try TestEnvironment.serveEnvironment(queue: queue, handlersFile: dir + "/handlers.yaml", broker: broker)
            .merging(extra) { $1 }
        let warren = try ChildProcess(TestEnvironment.binary("warren"), ["serve"], environment: environment)
        let address = try await operationsAddress(of: warren)
        // On the test broker: ready, so its queues are declared (submit declares nothing).
        if broker == nil { try await waitUntil("the worker to be ready", within: 30) { await get(address + "/readyz")?.0 == 200 } }
        return (warren, address, environment)
    }

    /// Runs `warren ARGUMENTS` with `environment`: exit and output.
    static func warren(_ arguments: [String], _ environment: [String: String]) async throws -> (ProcessExit, String) {
        let child = try ChildProcess(TestEnvironment.binary("warren"), arguments, environment: environment)
        let exit = try await child.exit(within: 60)
        return (exit, child.output)
    }

    static func metric(_ text: String, _ prefix: String) -> Double? {
        text.split(separator: "\n").first { $0.hasPrefix(prefix + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
    }

    /// The queues exist as quorum queues and the worker is configured classic: it says so once,
    /// at error level, and `/readyz` gives RabbitMQ's reason (it used to log "lost the RabbitMQ
    /// connection; reconnecting" at every attempt).
    @Test(.timeLimit(.minutes(4)))
    func aWorkerWhoseConfigurationDoesNotMatchTheQueuesSaysSo() async throws {
        try await usingBroker {
            let queue = TestEnvironment.unique()
            let declared = AMQPBroker(AMQPBroker.Configuration(url: try AMQPURL(try TestEnvironment.amqpURL), queue: queue, queueType: .quorum))
            try await declared.waitUntilReady()
            await declared.close()
            let (serve, base, _) = try await Self.serve(queue: queue, handlers: Self.handlers, broker: try TestEnvironment.amqpURL)
            try await waitUntil("the mismatch in the log", within: 30) { serve.output.contains("do not match this configuration") }
            let line = try #require(serve.lines.first { $0.contains("do not match this configuration") })
            #expect(line.contains("\"level\":\"error\"") && (line.contains("x-queue-type") || line.contains("x-dead-letter")), "\(line)")
            let ready = await get(base + "/readyz")
            #expect(ready?.0 == 503 && ready?.1.contains("exists with other arguments") == true, "\(ready?.1 ?? "")")
            #expect(!serve.output.contains("lost the RabbitMQ connection"), "a mismatch is not a lost connection")
            serve.signal(SIGTERM)
            _ = try await serve.exit(within: 30)
            let raw = try RawConnection(url: try AMQPURL(try TestEnvironment.amqpURL))
            try TestBrokerQueues.delete(queue, on: raw)
            raw.close()
        }
    }

    /// A handlers file entry without a timeout takes `worker.default_timeout` (every entry used to
    /// get 30 s of its own, so the key changed nothing under `serve`: found from outside).
    @Test(.timeLimit(.minutes(4)))
    func anEntryWithoutATimeoutTakesTheWorkersDefault() async throws {
        try await usingBroker {
            let queue = TestEnvironment.unique()
            let handlers = """
                handlers:
                  sleepy:
                    exec: { command: [/bin/sh, -c, 'sleep 20'] }
                """
            let (serve, _, environment) = try await Self.serve(queue: queue, handlers: handlers, adding: ["WARREN_WORKER_DEFAULT_TIMEOUT": "1s"])
            let started = ContinuousClock.now
            let (exit, output) = try await Self.warren(["submit", "sleepy", "--max-retries", "0", "--wait", "--timeout", "30s"], environment)
            #expect(exit == .exited(2) && output.contains("timed out"), "\(output)")
            #expect(ContinuousClock.now - started < .seconds(15), "the 1 s default ended the 20 s command")
            serve.signal(SIGTERM)
            #expect(try await serve.exit(within: 30) == .exited(0))
            let raw = try RawConnection(url: try AMQPURL(try TestEnvironment.amqpURL))
            defer { raw.close() }
            try TestBrokerQueues.delete(queue, on: raw)
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func metricsReadinessWhileDrainingAndSubmitsMessage() async throws {
        try await usingBroker { try await runMetricsAndDraining() }
    }

    func runMetricsAndDraining() async throws {
        let queue = TestEnvironment.unique()
        let (serve, base, environment) = try await Self.serve(queue: queue, handlers: Self.handlers)
        try await waitUntil("/readyz", within: 30) { await get("\(base)/readyz")?.0 == 200 }

        // Retries exhausted: told as such (not as a rejection), exit code 2.
        let (exit, output) = try await Self.warren(["submit", "always.fails", "--wait", "--timeout", "30s"], environment)
        #expect(exit == .exited(2), "\(output)")
        #expect(output.contains("was dead-lettered: retries exhausted after 2 attempt(s); last error: /bin/sh exited with 1: out of stock (reason retries_exhausted)"),
                "\(output)")
        #expect(!output.contains("rejected"), "\(output)")
        let metrics = await get("\(base)/metrics")?.1 ?? ""
        #expect(Self.metric(metrics, #"warren_retries_total{queue="\#(queue)",name="always.fails"}"#) == 1, "\(metrics)")
        #expect(Self.metric(metrics, #"warren_dead_letters_total{queue="\#(queue)",reason="retries_exhausted"}"#) == 1, "\(metrics)")
        #expect(Self.metric(metrics, #"warren_broker_reconnects_total{queue="\#(queue)"}"#) == 0, "\(metrics)")
        #expect(Self.metric(metrics, #"warren_jobs_in_flight{queue="\#(queue)"}"#) == 0, "\(metrics)")
        // Fed through swift-metrics now, under the names dashboards know; the reconnect count is a counter.
        for type in ["warren_jobs_total counter", "warren_retries_total counter", "warren_dead_letters_total counter",
                     "warren_broker_reconnects_total counter", "warren_jobs_in_flight gauge", "warren_job_duration_seconds histogram"] {
            #expect(metrics.contains("# TYPE \(type)\n"), "\(type): \(metrics)")
        }
        #expect(metrics.contains(#"warren_job_duration_seconds_bucket{queue="\#(queue)",name="always.fails",le="0.005"}"#), "\(metrics)")

        // A running job is in flight; SIGTERM while it runs: not ready while draining, then it finishes.
        let (submitted, _) = try await Self.warren(["submit", "slow.job", "--payload", #"{"n": 1}"#], environment)
        #expect(submitted == .exited(0))
        try await waitUntil("the slow job in flight", within: 30) {
            Self.metric(await get("\(base)/metrics")?.1 ?? "", #"warren_jobs_in_flight{queue="\#(queue)"}"#) == 1
        }
        serve.signal(SIGTERM)
        try await waitUntil("/readyz to answer 503 while draining", within: 10) { await get("\(base)/readyz")?.0 == 503 }
        #expect(await get("\(base)/healthz")?.0 == 200, "still alive while draining")
        #expect(try await serve.exit(within: 30) == .exited(0))
        #expect(serve.output.contains("drained"))

        // No worker: no result in time, exit code 3.
        let (late, lateOutput) = try await Self.warren(["submit", "slow.job", "--wait", "--timeout", "1s"], environment)
        #expect(late == .exited(3), "\(lateOutput)")
        #expect(lateOutput.contains("no result for job"), "\(lateOutput)")
        let raw = try RawConnection(url: try AMQPURL(try TestEnvironment.amqpURL))
        defer { raw.close() }
        try TestBrokerQueues.delete(queue, on: raw)
    }

    @Test(.timeLimit(.minutes(1)))
    func notReadyWhileTheBrokerCannotBeReached() async throws {
        let queue = TestEnvironment.unique()
        let (serve, base, _) = try await Self.serve(queue: queue, handlers: Self.handlers, broker: "amqp://guest:guest@127.0.0.1:\(try closedPort())/")
        let ready = await get("\(base)/readyz")
        #expect(ready?.0 == 503 && ready?.1.contains("not ready") == true, "\(String(describing: ready))")
        #expect(await get("\(base)/healthz")?.0 == 200)
        // Shutdown does not wait for a connection that never comes (it once waited forever: the
        // consumers' cancel was queued for the next connection).
        serve.signal(SIGTERM)
        #expect(try await serve.exit(within: 20) == .exited(0), "\(serve.output.suffix(400))")
    }

    /// The broker drops every connection: counted, and ready again once back. (Not ready while
    /// disconnected is checked above; here the reconnection can be quicker than a poll.)
    @Test(.timeLimit(.minutes(4)))
    func aLostConnectionIsCountedAndReadyAgainOnceBack() async throws {
        try await usingBroker(exclusive: true) {
            let queue = TestEnvironment.unique()
            let (serve, base, _) = try await Self.serve(queue: queue, handlers: Self.handlers)
            try await waitUntil("/readyz", within: 30) { await get("\(base)/readyz")?.0 == 200 }
            try await rabbitmqctl(["close_all_connections", "test"])
            try await waitUntil("the lost connection in the log", within: 30) { serve.output.contains("lost the RabbitMQ connection") }
            try await waitUntil("/readyz to answer 200 again", within: 60) { await get("\(base)/readyz")?.0 == 200 }
            let metrics = await get("\(base)/metrics")?.1 ?? ""
            #expect((Self.metric(metrics, #"warren_broker_reconnects_total{queue="\#(queue)"}"#) ?? 0) >= 1, "\(metrics)")
            serve.signal(SIGTERM)
            #expect(try await serve.exit(within: 30) == .exited(0))
            let raw = try RawConnection(url: try AMQPURL(try TestEnvironment.amqpURL))
            defer { raw.close() }
            try TestBrokerQueues.delete(queue, on: raw)
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func deadLetterCommands() async throws {
        try await usingBroker { try await runDeadLetterCommands() }
    }

    func runDeadLetterCommands() async throws {
        let queue = TestEnvironment.unique()
        let (serve, _, environment) = try await Self.serve(queue: queue, handlers: Self.handlers)
        var ids: [String] = []
        for n in 0..<2 {
            let (exit, output) = try await Self.warren(["submit", "always.fails", "--payload", #"{"n": \#(n)}"#, "--max-retries", "0"], environment)
            #expect(exit == .exited(0), "\(output)")
            ids.append(output.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        let tools = AMQPTools(url: try AMQPURL(try TestEnvironment.amqpURL), queue: queue)
        try await waitUntil("two dead letters", within: 60) { ((try? await tools.deadLetters())?.count ?? 0) == 2 }
        serve.signal(SIGTERM)
        #expect(try await serve.exit(within: 30) == .exited(0))

        let (listed, list) = try await Self.warren(["dead-letters", "list"], environment)
        #expect(listed == .exited(0) && list.contains(ids[0]) && list.contains(ids[1]) && list.contains("retries_exhausted"), "\(list)")
        #expect(list.contains("2 dead letter(s)"), "\(list)")
        let (_, none) = try await Self.warren(["dead-letters", "list", "--reason", "deadline"], environment)
        #expect(none.contains("0 dead letter(s)"), "\(none)")
        let (shown, show) = try await Self.warren(["dead-letters", "show", ids[0]], environment)
        #expect(shown == .exited(0) && show.contains("reason:    retries_exhausted") && show.contains(#"payload:   {"n": 0}"#), "\(show)")
        #expect(show.contains("error:     retries exhausted after 1 attempt(s); last error: /bin/sh exited with 1: out of stock"), "\(show)")
        let (unknown, unknownOutput) = try await Self.warren(["dead-letters", "show", "no-such-id"], environment)
        #expect(unknown == .exited(64) && unknownOutput.contains("no dead letter with id no-such-id"), "\(unknownOutput)")

        let (replayed, replay) = try await Self.warren(["dead-letters", "replay", "--id", ids[0]], environment)
        #expect(replayed == .exited(0) && replay.contains("replayed 1 job(s)"), "\(replay)")
        let raw = try RawConnection(url: try AMQPURL(try TestEnvironment.amqpURL))
        defer { raw.close() }
        #expect(try raw.declareQueue("\(queue).normal", passive: true).messages == 1, "the replayed job is back in its queue")

        // A foreign dead letter whose time header is an absurd number: shown, not a crash.
        try raw.publish(OutgoingMessage(
            exchange: "", routingKey: "\(queue).dead",
            properties: MessageProperties(
                headers: [WireFormat.Header.deadAt: .double(1e300), WireFormat.Header.deadReason: .string("rejected")], messageID: "odd", type: "x"),
            body: []))
        let (oddListed, oddList) = try await Self.warren(["dead-letters", "list"], environment)
        #expect(oddListed == .exited(0) && oddList.contains("2 dead letter(s)"), "\(oddList)")
        let (oddShown, oddShow) = try await Self.warren(["dead-letters", "show", "odd"], environment)
        #expect(oddShown == .exited(0) && oddShow.contains("dead at:   unknown (? ago)"), "\(oddShow)")

        let (guarded, guardOutput) = try await Self.warren(["dead-letters", "purge"], environment)
        #expect(guarded == .exited(64) && guardOutput.contains("give --name, --reason or --id, or --all"), "\(guardOutput)")
        #expect(try raw.declareQueue("\(queue).dead", passive: true).messages == 2, "nothing purged without a filter or --all")
        let (badLimit, badLimitOutput) = try await Self.warren(["dead-letters", "list", "--limit", "0"], environment)
        #expect(badLimit == .exited(64), "\(badLimitOutput)")
        let (purged, purge) = try await Self.warren(["dead-letters", "purge", "--all"], environment)
        #expect(purged == .exited(0) && purge.contains("purged 2 dead letter(s)"), "\(purge)")
        #expect(try raw.declareQueue("\(queue).dead", passive: true).messages == 0)
        try TestBrokerQueues.delete(queue, on: raw)
    }
}
