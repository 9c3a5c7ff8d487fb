import AsyncHTTPClient
import Foundation
import Testing
import Warren
@testable import WarrenService
#if canImport(Glibc)
import Glibc
#endif

/// Runs one job through a worker pool on the in-memory broker with `register`'s handler.
func runOneJob(
    _ job: Job, retryPolicy: RetryPolicy = .immediate, register: (inout HandlerRegistry) throws -> Void
) async throws -> JobOutcome? {
    let broker = InMemoryBroker(configuration: QueueConfiguration(retryPolicy: retryPolicy))
    var registry = HandlerRegistry()
    try register(&registry)
    var configuration = WorkerPoolConfiguration(concurrency: 2)
    configuration.tracer = TraceContextTracer()  // as `WorkerService` has it
    let pool = WorkerPool(broker: broker, registry: registry, configuration: configuration)
    let runner = Task { await pool.run() }
    try await broker.enqueue([job])
    let outcome = await broker.outcome(of: job.id)
    pool.shutdown()
    await runner.value
    await broker.close()
    return outcome
}

/// A port of 127.0.0.1 nothing listens on: bound by the system, then closed again.
func closedPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TimedOut(description: "socket() failed") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard bound else { throw TimedOut(description: "bind() failed") }
    return Int(UInt16(bigEndian: address.sin_port))
}

@Suite("handler isolation")
struct HandlerIsolationTests {
    @Test(.timeLimit(.minutes(1)))
    func aRefusedConnectionFailsTheAttemptAtOnce() async throws {
        let port = try closedPort()
        let client = HTTPHandler.makeClient()
        let handler = HTTPHandler(
            action: .init(url: URL(string: "http://127.0.0.1:\(port)/hook")!, method: "POST", headers: [:]), timeout: .seconds(30), client: client)
        let started = ContinuousClock.now
        let outcome = try await runOneJob(Job(name: "http", maxRetries: 0)) { registry in
            try registry.registerRaw("http", timeout: .seconds(30)) { payload, context in try await handler.run(payload, context) }
        }
        let took = ContinuousClock.now - started
        try await client.shutdown()
        guard case let .deadLettered(reason, errors)? = outcome else { Issue.record("\(String(describing: outcome))"); return }
        #expect(reason.code == "retries_exhausted")
        // At once: not after the 10 s connect timeout a retried connection would wait for (a
        // bound of 2 s failed once when 40 suites started together on 2 cores: 2.2 s).
        #expect(took < .seconds(6), "a refused connection took \(took); it must fail the attempt at once")
        let message = errors.first?.message ?? ""
        #expect(message.contains("POST http://127.0.0.1:\(port)/hook failed: could not connect: Connection refused"), "\(message)")
    }

    @Test(.timeLimit(.minutes(1)))
    func aCommandGetsACleanEnvironmentNotWarrensOwn() async throws {
        let secret = "pw-\(UUID().uuidString)"
        let handler = ExecHandler(
            action: .init(command: ["/usr/bin/env"], environment: ["MODE": "fast"], workingDirectory: nil, inheritedEnvironment: ["DB_URL"]),
            parentEnvironment: [
                "PATH": "/usr/bin:/bin", "HOME": "/home/warren", "LANG": "C.UTF-8", "LC_TIME": "C", "TZ": "UTC",
                "WARREN_BROKER_PASSWORD": secret, "WARREN_BROKER_URL": "amqp://app:\(secret)@rabbit/", "DB_URL": "db://x", "OTHER": "no",
            ])
        var job = Job(name: "exec", maxRetries: 0)
        job.metadata["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        let outcome = try await runOneJob(job) { registry in
            try registry.registerRaw("exec", timeout: .seconds(10)) { payload, context in try await handler.run(payload, context) }
        }
        guard case let .completed(output)? = outcome else { Issue.record("\(String(describing: outcome))"); return }
        let text = String(decoding: output, as: UTF8.self)
        #expect(!text.contains(secret))
        let variables = Dictionary(text.split(separator: "\n").map { line in
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            return (parts[0], parts.count > 1 ? parts[1] : "")
        }) { first, _ in first }
        #expect(Set(variables.keys) == [
            "PATH", "HOME", "LANG", "LC_TIME", "TZ", "DB_URL", "MODE", "WARREN_JOB_ID", "WARREN_JOB_NAME", "WARREN_ATTEMPT", "TRACEPARENT",
        ], "\(text)")
        #expect(variables["WARREN_JOB_ID"] == job.id.rawValue && variables["WARREN_ATTEMPT"] == "1" && variables["DB_URL"] == "db://x")
    }

    @Test(.timeLimit(.minutes(1)))
    func withoutAPathInWarrensEnvironmentACommandGetsTheStandardOne() async throws {
        let handler = ExecHandler(
            action: .init(command: ["/usr/bin/env"], environment: [:], workingDirectory: nil), parentEnvironment: ["SECRET": "x"])
        let job = Job(name: "exec", maxRetries: 0)
        let outcome = try await runOneJob(job) { registry in
            try registry.registerRaw("exec", timeout: .seconds(10)) { payload, context in try await handler.run(payload, context) }
        }
        var lines = Set(String(decoding: try #require(outcome?.completedData), as: UTF8.self).split(separator: "\n").map(String.init))
        // A job without a trace starts one: the attempt's span, as OpenTelemetry's tools read it.
        let trace = try #require(lines.first { $0.hasPrefix("TRACEPARENT=00-") }, "\(lines)")
        #expect(trace.count == "TRACEPARENT=".count + 55 && trace.hasSuffix("-01"), "\(trace)")
        lines.remove(trace)
        #expect(lines == ["PATH=/usr/local/bin:/usr/bin:/bin", "WARREN_JOB_ID=\(job.id)", "WARREN_JOB_NAME=exec", "WARREN_ATTEMPT=1"])
    }
}

extension JobOutcome {
    var completedData: Data? {
        if case let .completed(data) = self { return data }
        return nil
    }
}
