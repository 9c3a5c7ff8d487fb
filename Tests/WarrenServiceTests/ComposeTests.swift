import Foundation
import Testing
import Warren
@testable import WarrenAMQP
import WarrenService
import Yams
#if canImport(Glibc)
import Glibc
#endif

/// The docker compose deployment, checked without a docker engine: the file is validated with
/// `docker-compose config`, and the same configuration runs natively against the test broker.
@Suite("docker compose")
struct ComposeTests {
    static let composeFile = TestEnvironment.root.appendingPathComponent("compose/docker-compose.yml").path

    struct Compose: Decodable {
        struct Service: Decodable {
            var environment: [String: String]?
            var stop_grace_period: String?
            var depends_on: [String: [String: String]]?
            var secrets: [String]?
            var volumes: [String]?
            var ports: [String]?
        }
        var services: [String: Service]
    }

    func compose() throws -> Compose {
        try YAMLDecoder().decode(Compose.self, from: String(contentsOfFile: Self.composeFile, encoding: .utf8))
    }

    @Test(.timeLimit(.minutes(1)))
    func theComposeFileIsValid() async throws {
        let child = try ChildProcess("/usr/bin/env", ["docker-compose", "-f", Self.composeFile, "config", "--quiet"], environment: ProcessInfo.processInfo.environment)
        let exit = try await child.exit(within: 50)
        #expect(exit == .exited(0), "docker-compose config: \(child.output)")
        let file = try compose()
        let warren = try #require(file.services["warren"])
        #expect(warren.depends_on?["rabbitmq"]?["condition"] == "service_healthy", "Warren waits for a healthy RabbitMQ")
        let grace = ServiceConfiguration.duration(warren.environment?["WARREN_WORKER_SHUTDOWN_GRACE"] ?? "") ?? .zero
        let stop = ServiceConfiguration.duration(warren.stop_grace_period ?? "") ?? .zero
        #expect(grace > .zero && stop > grace, "docker's stop grace period (\(stop)) is longer than Warren's drain (\(grace))")
        #expect(warren.secrets == ["broker-password"], "the broker password comes from a secret file")
        #expect(file.services["rabbitmq"] != nil && file.services["orders"] != nil)
        #expect(file.services["rabbitmq"]?.ports?.contains("127.0.0.1:5672:5672") == true, "producers outside compose reach AMQP")
    }

    @Test(.timeLimit(.minutes(4)))
    func theComposeConfigurationRunsNativelyAndDrainsOnSIGTERM() async throws {
        try await usingBroker { try await runTheComposeConfigurationNatively() }
    }

    func runTheComposeConfigurationNatively() async throws {
        let service = try await FakeService { call in
            let payload = (try? JSONSerialization.jsonObject(with: call.body)) as? [String: Any] ?? [:]
            if payload["slow"] as? Bool == true { try? await Task.sleep(for: .milliseconds(1_500)) }
            return (200, #"{"confirmed": \#(payload["order"] ?? "null")}"#)
        }
        let file = try compose()
        let warren = try #require(file.services["warren"])
        // The compose file's environment, with what only differs outside docker: where RabbitMQ
        // and the orders service are, the handlers file's path, a free HTTP port (port 0: the log
        // says which), this test's queue.
        var environment = warren.environment ?? [:]
        let queue = TestEnvironment.unique()
        var url = try AMQPURL(try TestEnvironment.amqpURL)
        let password = url.password
        url.password = ""
        let secrets = NSTemporaryDirectory() + "warren-secrets-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: secrets, withIntermediateDirectories: true)
        try "\(password)\n".write(toFile: secrets + "/broker-password", atomically: false, encoding: .utf8)
        environment["WARREN_BROKER_URL"] = "amqp://\(url.user)@\(url.host):\(url.port)/"
        environment["WARREN_SECRETS_DIR"] = secrets
        environment["WARREN_HANDLERS_FILE"] = TestEnvironment.root.appendingPathComponent("compose/handlers.yaml").path
        environment["WARREN_HTTP_ADDRESS"] = "127.0.0.1:0"
        environment["WARREN_QUEUE_NAME"] = queue
        environment["ORDERS_URL"] = service.url
        environment["PATH"] = ProcessInfo.processInfo.environment["PATH"]
        let warrenProcess = try ChildProcess(TestEnvironment.binary("warren"), ["serve"], environment: environment)
        let address = Locked<String?>(nil)
        try await waitUntil("the operations server's address in the log", within: 30) {
            let listening = warrenProcess.lines.lazy
                .compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
                .first { $0["message"] as? String == "operations server listening" }
            address.withLock { $0 = listening?["http_address"] as? String }
            return address.withLock { $0 } != nil
        }
        let base = "http://\(address.withLock { $0 }!)"
        try await waitUntil("/readyz", within: 30) { await get("\(base)/readyz")?.0 == 200 }
        #expect(await get("\(base)/healthz")?.0 == 200)

        // Jobs from a plain AMQP client: a JSON body, a routing key and a type, nothing else.
        let producer = try RawConnection(url: try AMQPURL(try TestEnvironment.amqpURL))
        defer { producer.close() }
        func publish(_ body: String) throws -> String {
            let id = UUID().uuidString
            try producer.publish(OutgoingMessage(
                exchange: "warren", routingKey: "\(queue).normal",
                properties: MessageProperties(contentType: "application/json", deliveryMode: 2, messageID: id, type: "orders.confirm"),
                body: Array(body.utf8)))
            return id
        }
        var quick: [String] = []
        for n in 0..<200 { quick.append(try publish(#"{"order": \#(n)}"#)) }
        let quickIDs = quick
        try await waitUntil("200 orders confirmed", within: 60) { service.completed.isSuperset(of: quickIDs) }
        let calls = service.received
        let first = try #require(calls.first)
        #expect(first.path == "/confirm")
        #expect(first.headers["x-warren-job-name"] == "orders.confirm" && first.headers["x-warren-attempt"] == "1")
        #expect(first.headers["traceparent"]?.hasPrefix("00-") == true)
        let metrics = await get("\(base)/metrics")?.1 ?? ""
        #expect(metrics.contains(#"outcome="completed""#) && metrics.contains("warren_job_duration_seconds_bucket"))
        let job = await get("\(base)/jobs/\(quick[0])")
        #expect(job?.0 == 200 && job?.1.contains(#""status":"completed""#) == true, "\(String(describing: job))")
        #expect(await get("\(base)/jobs/nobody")?.0 == 404)

        // The command-line tools, with the same environment.
        let submit = try ChildProcess(
            TestEnvironment.binary("warren"), ["submit", "orders.confirm", "--payload", #"{"order": 77}"#, "--wait", "--timeout", "20s"],
            environment: environment)
        #expect(try await submit.exit(within: 30) == .exited(0))
        #expect(submit.output.contains(#"{"confirmed": 77}"#), "submit --wait prints the result: \(submit.output)")
        let queues = try ChildProcess(TestEnvironment.binary("warren"), ["queues"], environment: environment)
        #expect(try await queues.exit(within: 30) == .exited(0))
        #expect(queues.output.contains("\(queue).normal") && queues.output.contains("\(queue).dead"), "\(queues.output)")

        // SIGTERM with slow jobs running and more waiting: running ones finish, the rest go back.
        var slow: [String] = []
        for n in 0..<40 { slow.append(try publish(#"{"order": \#(1_000 + n), "slow": true}"#)) }
        try await waitUntil("slow orders running", within: 30) { service.received.count >= 201 + 4 }
        warrenProcess.signal(SIGTERM)
        let exit = try await warrenProcess.exit(within: 30)
        #expect(exit == .exited(0), "warren serve exited \(exit): \(warrenProcess.output.suffix(2_000))")
        #expect(service.mostAtOnce <= 4, "orders.confirm runs at most 4 at once (its handler's concurrency), not 8: \(service.mostAtOnce)")
        let started = Set(service.received.compactMap { $0.headers["x-warren-job-id"] })
        let finished = service.completed
        #expect(started.isSubset(of: finished), "every request Warren started was let finish")
        let inspector = try RawConnection(url: try AMQPURL(try TestEnvironment.amqpURL))
        defer { inspector.close() }
        let counts = try inspector.declareQueue("\(queue).normal", passive: true)
        let slowDone = Set(slow).intersection(finished).count
        #expect(counts.consumers == 0)
        #expect(counts.messages == slow.count - slowDone, "no job lost: \(slowDone) done + \(counts.messages) back in the queue = \(slow.count)")
        // Logs are JSON lines (the compose file sets log.format json) with job ids.
        let lines = warrenProcess.output.split(separator: "\n")
        #expect(!lines.isEmpty && lines.allSatisfy { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) != nil })
        #expect(lines.contains { $0.contains("drained") })
        for name in ["critical", "high", "normal", "low", "background"] { try inspector.deleteQueue("\(queue).\(name)") }
        try inspector.deleteQueue("\(queue).dead")
        try? FileManager.default.removeItem(atPath: secrets)
    }
}
