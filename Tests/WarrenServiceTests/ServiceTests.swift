import Foundation
import AsyncHTTPClient
import Logging
import Testing
import Warren
import WarrenAMQP
@testable import WarrenService
#if canImport(Glibc)
import Glibc
#endif

@Suite("configuration")
struct ConfigurationTests {
    func temporaryDirectory() throws -> String {
        let path = NSTemporaryDirectory() + "warren-config-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    func sources(flags: [String: String] = [:], env: [String: String] = [:], file: String? = nil, secrets: String = "/nonexistent") -> ServiceConfiguration.Sources {
        var sources = ServiceConfiguration.Sources()
        sources.flags = flags
        sources.environment = env
        sources.configFile = file
        sources.secretsDirectory = secrets
        sources.workingDirectory = "/nonexistent"
        return sources
    }

    @Test func defaultsNeedOnlyABrokerURL() async throws {
        let configuration = try await ServiceConfiguration.load(sources(env: ["WARREN_BROKER_URL": "amqp://app:pw@rabbit:5672/"]))
        #expect(configuration.brokerURL.host == "rabbit" && configuration.brokerURL.password == "pw")
        #expect(configuration.queue == "default" && configuration.concurrency == 16 && configuration.prefetch == 200)
        #expect(configuration.httpAddress?.host == "127.0.0.1" && configuration.httpAddress?.port == 9090)
        #expect(configuration.handlersFile == nil && configuration.logFormat == .auto && configuration.shutdownGrace == .seconds(25))
    }

    @Test func flagsBeatEnvironmentBeatsFileBeatsSecrets() async throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/warren.yaml"
        try """
        broker:
          url: amqp://app@file-host/
          password: from-file
        worker:
          concurrency: 3
          prefetch: 7
        queue:
          name: from-file
        """.write(toFile: file, atomically: false, encoding: .utf8)
        let secrets = dir + "/secrets"
        try FileManager.default.createDirectory(atPath: secrets, withIntermediateDirectories: true)
        try "from-secret\n".write(toFile: secrets + "/broker-password", atomically: false, encoding: .utf8)
        try "9\n".write(toFile: secrets + "/worker-prefetch", atomically: false, encoding: .utf8)

        let all = try await ServiceConfiguration.load(sources(
            flags: ["worker.concurrency": "5"], env: ["WARREN_WORKER_CONCURRENCY": "4", "WARREN_QUEUE_NAME": "from-env"],
            file: file, secrets: secrets))
        #expect(all.concurrency == 5, "a flag wins")
        #expect(all.queue == "from-env", "the environment beats the file")
        #expect(all.prefetch == 7, "the file beats secret files")
        #expect(all.brokerURL.host == "file-host" && all.brokerURL.password == "from-file")

        try "broker:\n  url: amqp://app@file-host/\n".write(toFile: file, atomically: false, encoding: .utf8)
        let secret = try await ServiceConfiguration.load(sources(file: file, secrets: secrets))
        #expect(secret.brokerURL.password == "from-secret", "the password from its secret file")
        let passwordFile = dir + "/pw"
        try "from-password-file".write(toFile: passwordFile, atomically: false, encoding: .utf8)
        let explicit = try await ServiceConfiguration.load(sources(env: ["WARREN_BROKER_PASSWORD_FILE": passwordFile]))
        #expect(explicit.brokerURL.password == "from-password-file")
    }

    @Test func badValuesStopStartUpNamingKeyValueAndWhatIsAllowed() async throws {
        let cases: [([String: String], String)] = [
            (["WARREN_WORKER_CONCURRENCY": "many"], "worker.concurrency (WARREN_WORKER_CONCURRENCY) is 'many'; allowed: a whole number from 1 to 4096"),
            (["WARREN_WORKER_PREFETCH": "0"], "worker.prefetch (WARREN_WORKER_PREFETCH) is '0'"),
            (["WARREN_BROKER_URL": "http://app:pw@rabbit"], "broker.url (WARREN_BROKER_URL) is 'http://app:***@rabbit'"),
            (["WARREN_QUEUE_TYPE": "stream"], "allowed: classic or quorum"),
            (["WARREN_WORKER_SHUTDOWN_GRACE": "soon"], "allowed: a duration such as 500ms, 30s, 5m or 1h"),
            (["WARREN_HTTP_ADDRESS": "9090"], "allowed: host:port"),
            (["WARREN_LOG_FORMAT": "xml"], "allowed: auto, text or json"),
            (["WARREN_HANDLERS_FILE": "/nonexistent/handlers.yaml"], "handlers.file (WARREN_HANDLERS_FILE) is '/nonexistent/handlers.yaml'"),
        ]
        for (env, message) in cases {
            do {
                _ = try await ServiceConfiguration.load(sources(env: env))
                Issue.record("\(env) was accepted")
            } catch {
                #expect("\(error)".contains(message), "\(error)")
            }
        }
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "worker:\n  concurency: 4\n".write(toFile: dir + "/typo.yaml", atomically: false, encoding: .utf8)
        await #expect(throws: ConfigurationError.unknownKey("worker.concurency", file: dir + "/typo.yaml")) {
            _ = try await ServiceConfiguration.load(sources(file: dir + "/typo.yaml"))
        }
        // A YAML list where one value is expected was read as no value, so the default (an outside tester's find).
        for (text, problem) in [
            ("worker:\n  shutdown_grace: [1]\n", "gives worker.shutdown_grace a YAML list; it takes one value"),
            ("worker:\n  concurrency: [1, 2]\n", "gives worker.concurrency a YAML list; it takes one value"),
            ("broker:\n  url: [amqp://a/, amqp://b/]\n", "gives broker.url a YAML list; it takes one value (several as one comma-separated string)"),
        ] {
            try text.write(toFile: dir + "/list.yaml", atomically: false, encoding: .utf8)
            await #expect(throws: ConfigurationError.file(dir + "/list.yaml", problem)) {
                _ = try await ServiceConfiguration.load(sources(file: dir + "/list.yaml"))
            }
        }
    }

    @Test func handlersFilesAreValidatedAndExpandTheEnvironment() throws {
        let text = """
        handlers:
          orders.confirm:
            http:
              url: ${ORDERS_URL:-http://orders:8000}/confirm
              headers: { Authorization: "Bearer ${TOKEN}" }
            timeout: 10s
            retries: 5
            backoff: { base: 2s, max: 1m }
            concurrency: 4
            capabilities: [eu]
          reports.render:
            exec:
              command: [/bin/render, --pdf]
        """
        let file = try HandlersFile.parse(text, file: "h.yaml", environment: ["TOKEN": "t0k"])
        #expect(file.entries.map(\.name) == ["orders.confirm", "reports.render"])
        let orders = file.entries[0]
        #expect(orders.action == .http(.init(url: URL(string: "http://orders:8000/confirm")!, method: "POST", headers: ["Authorization": "Bearer t0k"])))
        #expect(orders.timeout == .seconds(10) && orders.retries == 5 && orders.concurrency == 4 && orders.capabilities == ["eu"])
        #expect(orders.backoff?.baseDelay == .seconds(2) && orders.backoff?.maxDelay == .seconds(60))
        #expect(file.entries[1].timeout == nil, "unset: worker.default_timeout applies")

        let bad: [(String, String)] = [
            ("handlers:\n  a:\n    http: {url: ftp://x}\n", "is not an http:// or https:// URL"),
            ("handlers:\n  a:\n    timeout: 5s\n", "give it an http or an exec section"),
            ("handlers:\n  a:\n    exec: {command: [x]}\n    retrys: 3\n", "unknown field 'retrys'"),
            ("worker:\n  concurrency: 1\nhandlers:\n  a:\n    exec: {command: [x]}\n", "unknown top-level key 'worker'"),
            ("handlers:\n  a:\n    exec: {command: []}\n", "exec.command must name a program"),
            ("handlers:\n  a:\n    exec: {command: [x]}\n    timeout: forever\n", "timeout 'forever' is not a duration"),
            ("handlers:\n  a:\n    http: {url: \"${NOPE}\"}\n", "${NOPE} is not set in the environment"),
        ]
        for (text, message) in bad {
            #expect { _ = try HandlersFile.parse(text, file: "h.yaml", environment: [:]) } throws: { "\($0)".contains(message) }
        }
    }
}

@Suite("handlers")
struct HandlerTests {
    /// Runs one job through a worker pool on the in-memory broker with `register`'s handler.
    func run(_ job: Job, retryPolicy: RetryPolicy = .immediate, register: (inout HandlerRegistry) throws -> Void) async throws -> JobOutcome? {
        try await runOneJob(job, retryPolicy: retryPolicy, register: register)
    }

    func exec(_ command: [String], timeout: Duration = .seconds(10)) -> (inout HandlerRegistry) throws -> Void {
        { registry in
            let handler = ExecHandler(action: .init(command: command, environment: ["EXTRA": "x"], workingDirectory: nil))
            try registry.registerRaw("exec", timeout: timeout) { payload, context in try await handler.run(payload, context) }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func execPassesThePayloadOnStdinAndReturnsStdout() async throws {
        let job = Job(name: "exec", payload: Data(#"{"n":1}"#.utf8))
        let outcome = try await run(job, register: exec(["/bin/sh", "-c", #"cat; printf ' %s %s' "$WARREN_JOB_NAME" "$EXTRA""#]))
        #expect(outcome == .completed(Data(#"{"n":1} exec x"#.utf8)))
    }

    @Test(.timeLimit(.minutes(1)))
    func aFailingCommandFailsWithTheEndOfStderr() async throws {
        let job = Job(name: "exec", maxRetries: 1)
        let outcome = try await run(job, register: exec(["/bin/sh", "-c", "echo 'disk full' >&2; exit 3"]))
        guard case let .deadLettered(reason, errors)? = outcome else { Issue.record("\(String(describing: outcome))"); return }
        #expect(reason.code == "retries_exhausted" && errors.count == 2)
        #expect(errors.last?.message == "/bin/sh exited with 3: disk full")
    }

    @Test(.timeLimit(.minutes(1)))
    func aTimedOutCommandHasItsWholeProcessGroupKilled() async throws {
        let marker = NSTemporaryDirectory() + "warren-exec-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: marker) }
        // The shell starts a grandchild that would outlive a kill of the shell alone.
        let script = "sleep 30 & echo $! > \(marker); wait"
        let job = Job(name: "exec", maxRetries: 0)
        let outcome = try await run(job, register: exec(["/bin/sh", "-c", script], timeout: .milliseconds(500)))
        guard case let .deadLettered(reason, errors)? = outcome else { Issue.record("\(String(describing: outcome))"); return }
        #expect(reason.code == "retries_exhausted" && errors.first?.timedOut == true)
        let pid = try #require(Int32(try String(contentsOfFile: marker, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        try await waitUntil("the grandchild to be gone", within: 10) { kill(pid, 0) != 0 }
    }

    @Test(.timeLimit(.minutes(1)))
    func aCommandThatCannotStartFailsClearlyAndLeaksNoDescriptor() async throws {
        // Only the handler's own stdin files count: other suites open descriptors meanwhile, and
        // the exec tests running alongside hold at most one stdin file each.
        func stdinFilesOpen() throws -> Int {
            try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count { fd in
                ((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + fd)) ?? "").contains("warren-stdin-")
            }
        }
        let missing = "/nonexistent/warren-no-such-program"
        for _ in 0..<20 {
            let outcome = try await run(Job(name: "exec", maxRetries: 0), register: exec([missing, "--flag"]))
            guard case let .deadLettered(_, errors)? = outcome else { Issue.record("\(String(describing: outcome))"); return }
            #expect(errors.first?.message.contains(missing) == true, "\(errors)")
        }
        let open = try stdinFilesOpen()
        #expect(open <= 3, "\(open) stdin files still open after 20 failed starts")
    }

    @Test(.timeLimit(.minutes(1)))
    func httpStatusesDecideSuccessRetryOrDeadLetter() async throws {
        let attempts = Locked<[String: Int]>([:])
        let service = try await FakeService { call in
            let path = call.path
            let attempt = attempts.withLock { counts -> Int in
                counts[path, default: 0] += 1
                return counts[path]!
            }
            switch path {
            case "/ok": return (200, #"{"done":true}"#)
            case "/flaky": return attempt < 3 ? (503, "busy") : (201, #"{"done":"finally"}"#)
            case "/throttled": return attempt < 2 ? (429, "slow down") : (200, "{}")
            case "/invalid": return (422, #"{"error":"amount must be positive"}"#)
            case "/slow":
                try? await Task.sleep(for: .seconds(5))
                return (200, "{}")
            default: return (404, "no such route")
            }
        }
        func http(_ path: String, timeout: Duration = .seconds(5)) -> (inout HandlerRegistry) throws -> Void {
            { registry in
                let handler = HTTPHandler(
                    action: .init(url: URL(string: service.url + path)!, method: "POST", headers: ["X-Team": "payments"]),
                    timeout: timeout, client: .shared)
                try registry.registerRaw("http", timeout: timeout) { payload, context in try await handler.run(payload, context) }
            }
        }
        var job = Job(name: "http", payload: Data(#"{"amount":5}"#.utf8))
        job.metadata["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        #expect(try await run(job, register: http("/ok")) == .completed(Data(#"{"done":true}"#.utf8)))
        let call = try #require(service.received.first)
        #expect(call.headers["x-warren-job-id"] == job.id.rawValue && call.headers["x-team"] == "payments")
        #expect(call.headers["traceparent"]?.hasPrefix("00-4bf92f3577b34da6a3ce929d0e0e4736-") == true, "the producer's trace continues")
        #expect(call.body == Data(#"{"amount":5}"#.utf8))

        #expect(try await run(Job(name: "http", maxRetries: 3), register: http("/flaky")) == .completed(Data(#"{"done":"finally"}"#.utf8)))
        #expect(try await run(Job(name: "http", maxRetries: 3), register: http("/throttled")) == .completed(Data("{}".utf8)))
        let invalid = try await run(Job(name: "http", maxRetries: 3), register: http("/invalid"))
        guard case let .deadLettered(.rejected(why), _)? = invalid else { Issue.record("\(String(describing: invalid))"); return }
        #expect(why.contains("answered 422") && why.contains("amount must be positive"))
        #expect(attempts.withLock { $0["/invalid"] } == 1, "a 4xx is not retried")
        let slow = try await run(Job(name: "http", maxRetries: 0), register: http("/slow", timeout: .milliseconds(300)))
        guard case let .deadLettered(reason, errors)? = slow else { Issue.record("\(String(describing: slow))"); return }
        #expect(reason.code == "retries_exhausted" && errors.count == 1)
    }
}
