import Foundation
import Testing
import Warren
@testable import WarrenAMQP
@testable import WarrenService

/// A secret of this run: random, so no text can hold it by chance.
func makeSecret(_ tag: String) -> String { "\(tag)\(UInt64.random(in: 1...UInt64.max))x" }

/// A temporary directory, removed by the caller.
func makeTemporaryDirectory() throws -> String {
    let path = NSTemporaryDirectory() + "warren-test-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

@Suite("redaction")
struct RedactionTests {
    @Test func urlsAreShownWithoutUserInfoPasswordsOrListedQueryValues() {
        let redactor = Redactor()
        let cases: [(String, String)] = [
            ("http://svc:PW@host/hook?token=T&page=2", "http://svc:***@host/hook?token=***&page=2"),
            ("https://TOKEN@host:8443/x", "https://***@host:8443/x"),
            ("http://host/x?access_token=T&api_key=K&X-Signature=S#frag", "http://host/x?access_token=***&api_key=***&X-Signature=***#frag"),
            ("amqp://u:pa:ss/w@rd@127.0.0.1:99999/", "amqp://u:***@127.0.0.1:99999/"),
            ("amqp://u:SE CRET@[bad", "amqp://u:***@[bad"),
            ("http://host/plain", "http://host/plain"),
        ]
        for (raw, shown) in cases { #expect(redactor.url(raw) == shown) }
        #expect(Redactor(parameters: ["sig"]).url("http://h/?sig=1&token=2") == "http://h/?sig=***&token=2", "the list is configurable")
        #expect(Set(redactor.secrets(inURL: "http://svc:p%40w@h/?token=a%2Fb")) == ["p%40w", "p@w", "a%2Fb", "a/b"])
        #expect(Redactor.scrub("answer: Bearer abcdef and abcdef", hiding: ["Bearer abcdef", "abcdef", "ab"]) == "answer: *** and ***")
    }

    @Test func configurationErrorsNeverShowTheBrokerPassword() async throws {
        let secret = makeSecret("pw")
        let urls = [
            "amqp://u:\(secret)@127.0.0.1:99999/",
            "amqp://u:\(secret)@127.0.0.1:5672/?heartbeat=forever",
            "amqp://u:\(secret)@127.0.0.1:5672/?heartbeat=99999999999999999999",
            "http://u:\(secret)@127.0.0.1/",
            "amqp://u:\(secret)@[not a host",
            "amqp://u:\(secret)/with/slash@host/",
            "amqp://u:\(secret)@host/?cacert=/x",
            "amqp://u:\(secret)@host/?connection_timeout=1e300",
        ]
        for url in urls {
            var sources = ServiceConfiguration.Sources()
            sources.environment = ["WARREN_BROKER_URL": url]
            sources.secretsDirectory = "/nonexistent"
            do {
                _ = try await ServiceConfiguration.load(sources)
                Issue.record("\(url) was accepted")
            } catch {
                let text = "\(error)"
                #expect(!text.contains(secret), "\(text)")
                #expect(text.contains("broker.url (WARREN_BROKER_URL) is 'amqp://u:***@") || text.contains("is 'http://u:***@"), "\(text)")
            }
        }
    }

    /// `warren config check`, as a process: its output and its errors.
    @Test(.timeLimit(.minutes(1)))
    func configCheckNeverShowsASecret() async throws {
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let secrets = (0..<7).map { makeSecret("s\($0)-") }
        let handlers = dir + "/handlers.yaml"
        try """
        handlers:
          orders.confirm:
            http:
              url: http://svc:\(secrets[0])@orders:8000/hook?token=\(secrets[1])&page=1
              headers: { Authorization: "Bearer ${ORDERS_TOKEN}" }
          reports.render:
            exec:
              command: [/usr/local/bin/render, --key, \(secrets[3])]
              env: { API_KEY: \(secrets[4]) }
        """.write(toFile: handlers, atomically: false, encoding: .utf8)
        try "\(secrets[6])\n".write(toFile: dir + "/password", atomically: false, encoding: .utf8)
        let base = [
            "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "WARREN_SECRETS_DIR": "/nonexistent",
            "ORDERS_TOKEN": secrets[2], "WARREN_HANDLERS_FILE": handlers,
        ]
        func check(_ environment: [String: String], succeeds: Bool) async throws -> String {
            let child = try ChildProcess(TestEnvironment.binary("warren"), ["config", "check"], environment: base.merging(environment) { $1 })
            let exit = try await child.exit(within: 30)
            #expect((exit == .exited(0)) == succeeds, "\(exit): \(child.output)")
            for secret in secrets { #expect(!child.output.contains(secret), "\(child.output)") }
            return child.output
        }
        let valid = try await check(["WARREN_BROKER_URL": "amqp://app:\(secrets[5])@rabbit:5672/"], succeeds: true)
        #expect(valid.contains("amqp://app:***@rabbit:5672/") && valid.contains("http://svc:***@orders:8000/hook?token=***&page=1"), "\(valid)")
        #expect(valid.contains("exec /usr/local/bin/render"), "\(valid)")
        _ = try await check(["WARREN_BROKER_URL": "amqp://app@rabbit/", "WARREN_BROKER_PASSWORD": secrets[5]], succeeds: true)
        _ = try await check(["WARREN_BROKER_URL": "amqp://app@rabbit/", "WARREN_BROKER_PASSWORD_FILE": dir + "/password"], succeeds: true)
        let badURL = try await check(["WARREN_BROKER_URL": "amqp://u:\(secrets[5])@127.0.0.1:99999/"], succeeds: false)
        #expect(badURL.contains("broker.url"), "\(badURL)")
        try """
        handlers:
          orders.confirm:
            http: { url: "ftp://svc:\(secrets[0])@orders/?token=\(secrets[1])" }
        """.write(toFile: handlers, atomically: false, encoding: .utf8)
        let badHandler = try await check([:], succeeds: false)
        #expect(badHandler.contains("ftp://svc:***@orders/?token=***"), "\(badHandler)")
    }

    /// A handler's secrets never reach an error, a log line, a dead letter, a lifecycle event or
    /// `/jobs/{id}`: `warren serve` against the test broker, with handlers that fail.
    @Test(.timeLimit(.minutes(4)))
    func failingHandlersNeverShowTheirSecrets() async throws {
        try await usingBroker { try await runFailingHandlers() }
    }

    func runFailingHandlers() async throws {
        let secrets = (0..<8).map { makeSecret("h\($0)-") }
        // The service answers 500 repeating everything it was sent.
        let service = try await FakeService { call in
            (500, "got \(call.path) \(call.headers.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))")
        }
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let handlers = dir + "/handlers.yaml"
        try """
        handlers:
          leaky.http:
            http:
              url: http://svc:\(secrets[0])@127.0.0.1:\(service.port)/hook?token=\(secrets[1])&page=1
              headers: { Authorization: "Bearer \(secrets[2])", X-Api-Key: \(secrets[6]), X-Team: payments-team }
            retries: 1
            backoff: { base: 100ms, max: 100ms }
          leaky.exec:
            exec:
              command: [/bin/sh, -c, 'echo "failed for $1 with $API_KEY" >&2; exit 3', sh, \(secrets[3])]
              env: { API_KEY: \(secrets[4]) }
            retries: 1
            backoff: { base: 100ms, max: 100ms }
          leaky.missing:
            exec:
              command: [/nonexistent/warren-program, \(secrets[5])]
            retries: 0
        """.write(toFile: handlers, atomically: false, encoding: .utf8)
        let queue = TestEnvironment.unique()
        // A broker user of this test, with a secret password in the URL.
        let url = try AMQPURL(try TestEnvironment.amqpURL)
        let user = "redaction-\(UInt32.random(in: 0...UInt32.max))"
        try await rabbitmqctl(["add_user", user, secrets[7]])
        try await rabbitmqctl(["set_permissions", "-p", "/", user, ".*", ".*", ".*"])
        var environment = ProcessInfo.processInfo.environment
        environment["WARREN_BROKER_URL"] = "amqp://\(user):\(secrets[7])@\(url.host):\(url.port)/"
        environment["WARREN_QUEUE_NAME"] = queue
        environment["WARREN_HANDLERS_FILE"] = handlers
        environment["WARREN_HTTP_ADDRESS"] = "127.0.0.1:0"
        environment["WARREN_LOG_FORMAT"] = "json"
        environment["WARREN_LOG_LEVEL"] = "trace"
        environment["WARREN_EVENTS_ENABLED"] = "true"
        environment["WARREN_SECRETS_DIR"] = "/nonexistent"

        let raw = try RawConnection(url: url)
        defer { raw.close() }
        let topology = Topology(queue: queue)
        try topology.declare(raw)
        let events = "\(queue).events-watch"
        _ = try raw.declareQueue(events)
        try raw.bindQueue(events, exchange: Topology.eventsExchange, routingKey: "\(queue).#")

        let warren = try ChildProcess(TestEnvironment.binary("warren"), ["serve"], environment: environment)
        let base = try await operationsAddress(of: warren)
        var ids: [String: String] = [:]
        for name in ["leaky.http", "leaky.exec", "leaky.missing"] {
            let id = UUID().uuidString
            ids[name] = id
            try raw.publish(OutgoingMessage(
                exchange: Topology.exchange, routingKey: "\(queue).normal",
                properties: MessageProperties(contentType: "application/json", deliveryMode: 2, messageID: id, type: name),
                body: Array(#"{"order": 1}"#.utf8)))
        }
        let tools = AMQPTools(url: url, queue: queue)
        try await waitUntil("three dead letters", within: 60) { ((try? await tools.deadLetters())?.count ?? 0) >= 3 }
        let letters = try await tools.deadLetters()
        var shown: [String] = []
        for letter in letters {
            shown.append(letter.error)
            shown.append("\(letter.properties.headers)")
        }
        let httpError = letters.first { $0.id == ids["leaky.http"] }?.error ?? ""
        #expect(httpError.contains("POST http://svc:***@127.0.0.1:\(service.port)/hook?token=***&page=1 answered 500"), "\(httpError)")
        #expect(httpError.contains("x-team=payments-team"), "other header values stay readable: \(httpError)")
        let execError = letters.first { $0.id == ids["leaky.exec"] }?.error ?? ""
        #expect(execError.contains("/bin/sh exited with 3: failed for *** with ***"), "\(execError)")
        let missingError = letters.first { $0.id == ids["leaky.missing"] }?.error ?? ""
        #expect(missingError.contains("/nonexistent/warren-program"), "\(missingError)")
        for id in ids.values {
            let job = await get("\(base)/jobs/\(id)")
            #expect(job?.0 == 200 && job?.1.contains("dead_lettered") == true, "\(String(describing: job))")
            shown.append(job?.1 ?? "")
        }
        // The lifecycle events (polled: the connection is this task's alone).
        let deadline = ContinuousClock.now + .seconds(30)
        while shown.filter({ $0.contains(#""event":"dead_lettered""#) }).count < 3 {
            if let message = try raw.get(events, autoAck: true) {
                shown.append(String(decoding: message.body, as: UTF8.self))
                continue
            }
            guard ContinuousClock.now < deadline else { throw TimedOut(description: "timed out waiting for the dead-lettered events") }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(shown.contains { $0.contains(#""event":"retrying""#) }, "the retry events are looked at too")
        warren.signal(SIGTERM)
        #expect(try await warren.exit(within: 30) == .exited(0))
        let logs = warren.output
        #expect(logs.contains("job will be retried") && logs.contains("job dead-lettered"), "\(logs)")
        shown.append(logs)
        for secret in secrets {
            for text in shown { #expect(!text.contains(secret), "secret \(secret) shown in: \(text)") }
        }
        try raw.deleteQueue(events)
        try TestBrokerQueues.delete(queue, on: raw)
        try await rabbitmqctl(["delete_user", user])
    }
}

/// Runs `rabbitmqctl` against the test broker's node (through scripts/rabbitmq.sh, which knows
/// which RabbitMQ it is and where its rabbitmqctl lives).
func rabbitmqctl(_ arguments: [String]) async throws {
    guard let dir = ProcessInfo.processInfo.environment["WARREN_TEST_RABBITMQ_DIR"] else { throw TestEnvironment.NotConfigured() }
    let script = TestEnvironment.root.appendingPathComponent("scripts/rabbitmq.sh").path
    let child = try ChildProcess("/bin/bash", [script, "ctl", dir] + arguments)
    let exit = try await child.exit(within: 60)
    guard exit == .exited(0) else { throw TimedOut(description: "rabbitmqctl \(arguments.joined(separator: " ")): \(exit) \(child.output)") }
}

/// The address the operations server of a `warren serve` child (JSON logs) listens on.
func operationsAddress(of warren: ChildProcess) async throws -> String {
    let address = Locked<String?>(nil)
    try await waitUntil("the operations server's address in the log", within: 30) {
        let listening = warren.lines.lazy
            .compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
            .first { $0["message"] as? String == "operations server listening" }
        address.withLock { $0 = listening?["http_address"] as? String }
        return address.withLock { $0 } != nil
    }
    return "http://\(address.withLock { $0 }!)"
}

enum TestBrokerQueues {
    /// Deletes a Warren queue's broker queues.
    static func delete(_ queue: String, on raw: RawConnection) throws {
        for priority in JobPriority.allCases { try raw.deleteQueue("\(queue).\(priority.name)") }
        try raw.deleteQueue("\(queue).dead")
    }
}
