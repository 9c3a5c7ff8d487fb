import Foundation
import Logging
import Testing
import Warren
import WarrenAMQP
@testable import WarrenService

@Suite("configuration limits")
struct ConfigurationLimitsTests {
    func load(_ env: [String: String], flags: [String: String] = [:]) async throws -> ServiceConfiguration {
        var sources = ServiceConfiguration.Sources()
        sources.environment = env
        sources.flags = flags
        sources.secretsDirectory = "/nonexistent"
        sources.workingDirectory = "/nonexistent"
        return try await ServiceConfiguration.load(sources)
    }

    @Test(arguments: [
        ("WARREN_WORKER_SHUTDOWN_GRACE", "9e18s"), ("WARREN_WORKER_SHUTDOWN_GRACE", "721h"), ("WARREN_WORKER_SHUTDOWN_GRACE", "-5s"),
        ("WARREN_WORKER_DEFAULT_TIMEOUT", "1e300ms"), ("WARREN_WORKER_DEFAULT_TIMEOUT", "nan"), ("WARREN_RETRY_BASE_DELAY", "inf"),
        ("WARREN_RETRY_MAX_DELAY", "1e19"), ("WARREN_WORKER_CONCURRENCY", "99999999999999999999"), ("WARREN_WORKER_CONCURRENCY", "0"),
        ("WARREN_WORKER_PREFETCH", "65536"), ("WARREN_QUEUE_MAX_LENGTH", "0"), ("WARREN_QUEUE_MAX_LENGTH", "1e9"),
        ("WARREN_JOBS_RECENT", "-1"), ("WARREN_RETRY_MAX_RETRIES", "101"), ("WARREN_WORKER_RESERVED_CRITICAL", "5000"),
        ("WARREN_HTTP_ADDRESS", "127.0.0.1:65536"), ("WARREN_HTTP_ADDRESS", "127.0.0.1:99999999999999999999"),
    ])
    func outOfRangeNumbersAreRefusedNamingKeyValueAndRange(variable: String, value: String) async throws {
        do {
            let configuration = try await load([variable: value])
            Issue.record("\(variable)=\(value) was accepted: \(configuration.summary)")
        } catch let error as ConfigurationError {
            let text = "\(error)"
            #expect(text.contains("(\(variable)) is '\(value)'; allowed: "), "\(text)")
        }
    }

    @Test func durationsUpToThirtyDaysAreTaken() async throws {
        let configuration = try await load(["WARREN_WORKER_SHUTDOWN_GRACE": "720h", "WARREN_WORKER_DEFAULT_TIMEOUT": "0", "WARREN_RETRY_MAX_DELAY": "1.5s"])
        #expect(configuration.shutdownGrace == .seconds(30 * 86_400) && configuration.defaultTimeout == nil)
        #expect(configuration.retryPolicy.maxDelay == .milliseconds(1_500))
        #expect(ServiceConfiguration.duration("1e300ms") == nil && ServiceConfiguration.duration("-1s") == nil)
    }

    @Test func handlerNumbersAreRangeChecked() {
        let bad: [(String, String)] = [
            ("timeout: 1e300ms", "timeout '1e300ms' is not a duration"),
            ("timeout: 9e18s", "timeout '9e18s' is not a duration"),
            ("backoff: { base: 1e300h }", "backoff.base '1e300h' is not a duration"),
            ("backoff: { multiplier: 1e300 }", "backoff.multiplier"),
            ("backoff: { jitter: -1 }", "backoff.jitter"),
            ("retries: 99999999999999999999", "retries"),
            ("concurrency: 1e300", "concurrency"),
        ]
        for (field, message) in bad {
            let text = "handlers:\n  a:\n    exec: {command: [x]}\n    \(field)\n"
            #expect { _ = try HandlersFile.parse(text, file: "h.yaml", environment: [:]) } throws: { error in
                error is ConfigurationError && "\(error)".contains(message)
            }
        }
    }

    /// `warren config check` exits with an error, not a crash, on the values of the report.
    @Test(.timeLimit(.minutes(1)))
    func configCheckRefusesHugeValuesWithoutCrashing() async throws {
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "handlers:\n  a:\n    exec: {command: [x]}\n    timeout: 1e300ms\n".write(toFile: dir + "/h.yaml", atomically: false, encoding: .utf8)
        let cases: [([String: String], String)] = [
            (["WARREN_WORKER_SHUTDOWN_GRACE": "9e18s"], "worker.shutdown_grace (WARREN_WORKER_SHUTDOWN_GRACE) is '9e18s'"),
            (["WARREN_WORKER_DEFAULT_TIMEOUT": "1e300ms"], "worker.default_timeout (WARREN_WORKER_DEFAULT_TIMEOUT) is '1e300ms'"),
            (["WARREN_HANDLERS_FILE": dir + "/h.yaml"], "timeout '1e300ms' is not a duration"),
        ]
        for (env, message) in cases {
            let child = try ChildProcess(
                TestEnvironment.binary("warren"), ["config", "check"], environment: env.merging(["WARREN_SECRETS_DIR": "/nonexistent"]) { $1 })
            #expect(try await child.exit(within: 30) == .exited(1), "\(env): \(child.output)")
            #expect(child.output.contains(message), "\(child.output)")
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func configKeysListsEveryURLQueryOptionTheParserTakes() async throws {
        let child = try ChildProcess(TestEnvironment.binary("warren"), ["config", "keys"])
        #expect(try await child.exit(within: 30) == .exited(0))
        let readme = try String(contentsOf: TestEnvironment.root.appendingPathComponent("README.md"), encoding: .utf8)
        #expect(AMQPURL.queryOptions.map(\.name).sorted() == ["cacertfile", "connection_timeout", "heartbeat", "verify"])
        for option in AMQPURL.queryOptions {
            #expect(child.output.contains("?\(option.name)="), "config keys names ?\(option.name)=")
            #expect(readme.contains("`?\(option.name)="), "the README names ?\(option.name)=")
        }
        let accepted = try AMQPURL("amqps://u:p@h/?heartbeat=5&connection_timeout=2500&cacertfile=/ca.pem&verify=false")
        #expect(accepted.heartbeat == 5 && accepted.connectTimeout == 2.5 && accepted.caCertificate == "/ca.pem" && !accepted.verifyPeer)
        #expect(throws: AMQPError.self, "an option the table does not list is refused, so the table is the parser's whole list") {
            try AMQPURL("amqp://u:p@h/?heartbeats=5")
        }
        for key in ServiceConfiguration.keys { #expect(child.output.contains(key.name + "\n")) }
    }

    /// Each default is written once, in the keys table: the README's table has one row per key,
    /// with its environment variable and the table's default, and nothing else; and a
    /// configuration read from nothing takes those defaults.
    @Test func theREADMEKeysTableMatchesTheKeysTableAndEmptySourcesTakeItsDefaults() async throws {
        let readme = try String(contentsOf: TestEnvironment.root.appendingPathComponent("README.md"), encoding: .utf8)
        let lines = readme.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let header = try #require(lines.firstIndex(of: "| Key | Environment | Default | |"), "the README's keys table")
        let rows = lines[(header + 2)...].prefix { $0.hasPrefix("|") }
        var seen: [String] = []
        for row in rows {
            let cells = row.split(separator: "|", omittingEmptySubsequences: false).dropFirst().dropLast()
                .map { $0.trimmingCharacters(in: .whitespaces) }
            try #require(cells.count == 4, "\(row)")
            let name = cells[0].trimmingCharacters(in: CharacterSet(charactersIn: "`"))
            seen.append(name)
            guard let key = ServiceConfiguration.keys.first(where: { $0.name == name }) else {
                Issue.record("the README lists \(name), which is no key")
                continue
            }
            #expect(cells[1] == "`\(key.environmentVariable)`", "\(name)")
            #expect(cells[2] == (key.defaultValue.map { "`\($0)`" } ?? key.unset), "\(name): README \(cells[2]), keys table \(key.shownDefault)")
        }
        #expect(seen == ServiceConfiguration.keys.map(\.name), "one row per key, in the table's order")

        let empty = try await load([:])
        let defaults = Dictionary(uniqueKeysWithValues: ServiceConfiguration.keys.map { ($0.name, $0.shownDefault) })
        #expect(empty.concurrency == WorkerPoolConfiguration.defaultConcurrency && "\(empty.concurrency)" == defaults["worker.concurrency"])
        #expect("\(empty.prefetch)" == defaults["worker.prefetch"] && "\(empty.deliveryLimit)" == defaults["queue.delivery_limit"])
        #expect(empty.shutdownGrace == WorkerPoolConfiguration.defaultShutdownGrace && defaults["worker.shutdown_grace"] == "25s")
        #expect(empty.retryPolicy.baseDelay == .seconds(1) && empty.retryPolicy.maxDelay == .seconds(300))
        #expect(defaults["retry.base_delay"] == "1s" && defaults["retry.max_delay"] == "5m" && defaults["worker.default_timeout"] == "30s")
        #expect(empty.defaultTimeout == .seconds(30) && "\(empty.maxRetries)" == defaults["retry.max_retries"])
        #expect(empty.queue == "default" && empty.queueType == .classic && empty.logFormat == .auto && empty.logLevel == .info)
        #expect(empty.httpAddress?.host == "127.0.0.1" && empty.httpAddress?.port == 9090 && empty.recentJobs == 10_000 && !empty.publishesEvents)
        #expect(empty.maxQueueLength == nil && empty.capabilities.isEmpty)
    }

    @Test func theBrokerPasswordComesFromThePasswordKeyThenThePasswordFileThenTheURL() async throws {
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "from-file\n".write(toFile: dir + "/pw", atomically: false, encoding: .utf8)
        let url = "amqp://app:from-url@rabbit/"
        #expect(try await load(["WARREN_BROKER_URL": url]).brokerURL.password == "from-url")
        #expect(try await load(["WARREN_BROKER_URL": url, "WARREN_BROKER_PASSWORD_FILE": dir + "/pw"]).brokerURL.password == "from-file")
        #expect(try await load(["WARREN_BROKER_URL": url, "WARREN_BROKER_PASSWORD_FILE": dir + "/pw", "WARREN_BROKER_PASSWORD": "from-env"])
            .brokerURL.password == "from-env")
        var sources = ServiceConfiguration.Sources()
        sources.environment = ["WARREN_BROKER_URL": url, "WARREN_BROKER_PASSWORD_FILE": dir + "/pw"]
        sources.secretsDirectory = dir + "/secrets"
        try FileManager.default.createDirectory(atPath: dir + "/secrets", withIntermediateDirectories: true)
        try "from-secret\n".write(toFile: dir + "/secrets/broker-password", atomically: false, encoding: .utf8)
        #expect(try await ServiceConfiguration.load(sources).brokerURL.password == "from-secret", "the broker-password secret file is broker.password")
        await #expect(throws: ConfigurationError.invalid(key: "broker.password_file", value: dir + "/none", allowed: "a readable file holding the password")) {
            _ = try await load(["WARREN_BROKER_PASSWORD_FILE": dir + "/none"])
        }
    }

    /// `--config FILE` (and WARREN_CONFIG) on the command line, below flags and the environment.
    @Test(.timeLimit(.minutes(1)))
    func theConfigFileFlagIsRead() async throws {
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/warren.yaml"
        try "queue:\n  name: from-file\nworker:\n  concurrency: 7\nlog:\n  redact_params: sig\n".write(toFile: file, atomically: false, encoding: .utf8)
        func check(_ arguments: [String], _ env: [String: String] = [:]) async throws -> String {
            let child = try ChildProcess(
                TestEnvironment.binary("warren"), ["config", "check"] + arguments, environment: env.merging(["WARREN_SECRETS_DIR": "/nonexistent"]) { $1 })
            #expect(try await child.exit(within: 30) == .exited(0), "\(child.output)")
            return child.output
        }
        let flag = try await check(["--config", file])
        #expect(flag.contains("queue.name                 from-file") && flag.contains("worker.concurrency         7"), "\(flag)")
        #expect(flag.contains("log.redact_params          sig"), "\(flag)")
        let env = try await check([], ["WARREN_CONFIG": file, "WARREN_WORKER_CONCURRENCY": "9"])
        #expect(env.contains("queue.name                 from-file") && env.contains("worker.concurrency         9"), "\(env)")
        let missing = try ChildProcess(TestEnvironment.binary("warren"), ["config", "check", "--config", dir + "/nope.yaml"], environment: [:])
        #expect(try await missing.exit(within: 30) == .exited(1))
        #expect(missing.output.contains("the config file \(dir)/nope.yaml does not exist"), "\(missing.output)")
    }
}
