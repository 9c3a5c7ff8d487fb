import Configuration
import SystemPackage
import Foundation
public import Logging
public import Warren
public import WarrenAMQP
package import WarrenRedis
import Yams

/// Everything `warren serve` needs, read once at start-up from (highest first) command-line flags,
/// `WARREN_…` environment variables, a YAML config file and secret files, and validated: a bad
/// value stops start-up naming the key, the value and what is allowed.
public struct ServiceConfiguration: Sendable {
    public enum LogFormat: String, Sendable, CaseIterable {
        /// Human-readable on a terminal, JSON lines otherwise.
        case auto
        case text
        case json
    }

    /// The broker's addresses, tried in order (the nodes of a cluster); the password applies to each.
    public var brokerURLs: [AMQPURL]
    /// The first address.
    public var brokerURL: AMQPURL { brokerURLs[0] }
    public var queue: String
    public var queueType: QueueType
    public var maxQueueLength: Int?
    public var deliveryLimit: Int
    public var concurrency: Int
    public var prefetch: UInt16
    public var reservedForCritical: Int
    public var capabilities: Set<String>
    public var shutdownGrace: Duration
    public var defaultTimeout: Duration?
    public var maxRetries: Int
    public var retryPolicy: RetryPolicy
    public var handlersFile: String?
    /// `host:port` of the operations HTTP server; nil turns it off.
    public var httpAddress: (host: String, port: Int)?
    public var logFormat: LogFormat
    public var logLevel: Logger.Level
    public var publishesEvents: Bool
    /// Jobs `/jobs/{id}` remembers.
    public var recentJobs: Int
    /// What is hidden when a URL or an error is shown (`log.redact_params`).
    public var redactor: Redactor
    /// The job-state store shared by every instance on the queue; nil: none (per-process guarantees).
    package var stateURL: RedisURL?
    /// How long an instance's lease in the store lasts without renewal.
    public var stateLease: Duration
    /// How long a job's record is kept after its last change.
    public var stateRetention: Duration
    /// Results longer than this are stored cut to it, flagged truncated.
    public var stateResultLimit: Int

    /// Every key, its default and what it takes: the reference `warren config check --keys` prints
    /// and the README repeats.
    public static let keys: [Key] = [
        Key("broker.url", "amqp://guest:guest@127.0.0.1:5672/",
            "the RabbitMQ URL, or several separated by commas (the nodes of a cluster, tried in order; on a loss the next at once): "
                + "amqp:// or amqps://, user, password, host, port, vhost, and the query options "
                + AMQPURL.queryOptions.map { "?\($0.name)= (\($0.help))" }.joined(separator: ", ")),
        Key("broker.password", nil, unset: "from the URL", "overrides the URL's password; best kept in a secret file", secret: true),
        Key("broker.password_file", nil, "a file holding the broker password (Docker and Kubernetes secrets)"),
        Key("queue.name", "default", "the Warren queue to consume: broker queues <name>.<priority> and <name>.dead"),
        Key("queue.type", QueueType.classic.rawValue, "classic or quorum (quorum: replicated, survives a node loss)"),
        Key("queue.max_length", nil, unset: "unbounded", "most ready messages per priority queue, 1 to 100000000; publishes beyond it are refused"),
        Key("queue.delivery_limit", "\(Topology.defaultDeliveryLimit)",
            "quorum queues: how often a message may return to its queue (its worker died or lost the connection) before it is "
                + "dead-lettered with reason delivery_limit, \(Topology.deliveryLimits.lowerBound) to \(Topology.deliveryLimits.upperBound)"),
        Key("worker.concurrency", "\(WorkerPoolConfiguration.defaultConcurrency)", "jobs run at once, 1 to 4096"),
        Key("worker.prefetch", "\(AMQPBroker.Configuration.defaultPrefetch)", "unacked messages each priority queue's consumer may hold, 1 to 65535"),
        Key("worker.reserved_critical", "0", "extra slots only critical jobs may use, 0 to 1024 (less than worker.concurrency)"),
        Key("worker.capabilities", nil, "comma-separated capabilities this worker offers (jobs may require them)"),
        Key("worker.shutdown_grace", format(WorkerPoolConfiguration.defaultShutdownGrace),
            "on SIGTERM the process ends within it, whatever the broker does; running jobs get all but its last fifth (at most 5 s), "
                + "kept for settling and closing (at most 720h, like every duration)"),
        Key("worker.default_timeout", "30s", "timeout of jobs whose message and handler name none (a handlers file entry without timeout); 0 for none"),
        Key("retry.max_retries", "\(AMQPBroker.Configuration.defaultMaxRetries)", "retries of jobs whose message and handler name none, 0 to 100"),
        Key("retry.base_delay", format(RetryPolicy.default.baseDelay), "backoff before the first retry (doubling, capped, with jitter)"),
        Key("retry.max_delay", format(RetryPolicy.default.maxDelay), "longest backoff, at least retry.base_delay"),
        Key("handlers.file", nil, unset: "handlers.yaml if present", "the YAML file mapping job names to http and exec handlers"),
        Key("http.address", "127.0.0.1:9090", "host:port of /healthz, /readyz, /metrics and /jobs/{id}; off to disable"),
        Key("log.format", LogFormat.auto.rawValue, "auto (text on a terminal, JSON lines otherwise), text or json"),
        Key("log.level", Logger.Level.info.rawValue, "trace, debug, info, notice, warning, error or critical"),
        Key("events.enabled", "false", "publish job outcomes to the warren.events exchange"),
        Key("jobs.recent", "10000", "jobs /jobs/{id} remembers, 0 to 10000000"),
        Key("log.redact_params", Redactor.defaultParameters.joined(separator: ","),
            "URL query parameters whose values are hidden wherever a URL is shown (a name containing one of them); none for none"),
        Key("state.url", nil, unset: "none: dedup, status, results and cancel hold per process",
            "redis://[user:password@]host:port/db of the job-state store (Redis or Valkey) every instance on the queue shares: "
                + "cluster-wide dedup, status, results and cancel"),
        Key("state.password", nil, unset: "from the URL", "overrides the state store URL's password; best kept in a secret file", secret: true),
        Key("state.password_file", nil, "a file holding the state store password (Docker and Kubernetes secrets)"),
        Key("state.lease", "10s", "how long an instance that stopped renewing (it died) holds its jobs before other instances may run them, 1s to 1h"),
        Key("state.retention", "24h",
            "how long a job's record (status, result) is kept after its last change, 1m to 720h: longer than your longest job "
                + "(a running job's record changes only when it starts and reports progress)"),
        Key("state.result_limit", "1048576", "longest result stored, in bytes, 0 to 67108864; a longer one is stored cut to it and flagged truncated"),
    ]

    /// A duration as the keys table shows it: `25s`, `5m`, `1h` or `500ms`.
    static func format(_ duration: Duration) -> String {
        let millis = duration.wholeMilliseconds
        for (unit, size) in [("h", Int64(3_600_000)), ("m", 60_000), ("s", 1_000)] where millis >= size && millis % size == 0 {
            return "\(millis / size)\(unit)"
        }
        return "\(millis)ms"
    }

    /// The key named `name` (a programming error if there is none).
    static func key(_ name: String) -> Key {
        guard let key = keys.first(where: { $0.name == name }) else { preconditionFailure("no configuration key \(name)") }
        return key
    }

    public struct Key: Sendable {
        public let name: String
        /// The value used when none is given: the only place each default is written. Nil: the
        /// key has no value then, and `unset` says what that means.
        public let defaultValue: String?
        /// What an unset key means, as the keys list and the README show it.
        public let unset: String
        public let help: String
        public let secret: Bool

        init(_ name: String, _ defaultValue: String?, unset: String = "none", _ help: String, secret: Bool = false) {
            self.name = name
            self.defaultValue = defaultValue
            self.unset = unset
            self.help = help
            self.secret = secret
        }

        /// The default as `warren config keys` and the README show it.
        public var shownDefault: String { defaultValue ?? unset }

        /// The environment variable for this key: `WARREN_` and the key in capitals, dots and
        /// dashes as underscores.
        public var environmentVariable: String {
            "WARREN_" + name.uppercased().map { $0.isLetter || $0.isNumber ? String($0) : "_" }.joined()
        }

        /// The secret file name for this key (in the secrets directory): dots as dashes.
        public var secretFileName: String { name.replacingOccurrences(of: ".", with: "-") }
    }

    /// Where the values come from.
    public struct Sources: Sendable {
        /// Values given as command-line flags, by key.
        public var flags: [String: String] = [:]
        public var environment: [String: String] = ProcessInfo.processInfo.environment
        /// The YAML config file (`--config`, or `WARREN_CONFIG`); nil: none.
        public var configFile: String?
        /// Secret files, one value per file named after its key (`broker-password`).
        public var secretsDirectory: String = "/run/secrets"
        /// Where relative paths (handlers file) are resolved.
        public var workingDirectory: String = FileManager.default.currentDirectoryPath

        public init() {}
    }

    /// Reads and validates the configuration.
    public static func load(_ sources: Sources) async throws -> ServiceConfiguration {
        var providers: [any ConfigProvider] = []
        let flagValues = Dictionary(uniqueKeysWithValues: sources.flags.map { key, value in
            (AbsoluteConfigKey(key.split(separator: ".").map(String.init)), ConfigValue(.string(value), isSecret: key == "broker.password" || key == "state.password"))
        })
        providers.append(InMemoryProvider(name: "flags", values: flagValues))
        providers.append(
            EnvironmentVariablesProvider(
                environmentVariables: sources.environment,
                secretsSpecifier: .specific(["WARREN_BROKER_PASSWORD", "WARREN_STATE_PASSWORD"])
            ).prefixKeys(with: ["warren"]))
        let configFile = sources.flags["config"] ?? sources.environment["WARREN_CONFIG"] ?? sources.configFile
        if let configFile {
            guard FileManager.default.fileExists(atPath: configFile) else {
                throw ConfigurationError.file(configFile, "does not exist")
            }
            try checkKeys(inFile: configFile)
            do {
                providers.append(try await FileProvider<YAMLSnapshot>(filePath: .init(configFile)))
            } catch {
                throw ConfigurationError.file(configFile, "is not valid YAML: \(error)")
            }
        }
        let secrets = sources.flags["secrets_dir"] ?? sources.environment["WARREN_SECRETS_DIR"] ?? sources.secretsDirectory
        if FileManager.default.fileExists(atPath: secrets) {
            providers.append(try await DirectoryFilesProvider(directoryPath: .init(secrets), allowMissing: true))
        }
        let reader = ConfigReader(providers: providers)
        return try ServiceConfiguration(reading: Values(reader: reader), workingDirectory: sources.workingDirectory)
    }

    /// Unknown keys in the config file are mistakes (a typo silently ignored is a default in
    /// production): name them.
    static func checkKeys(inFile path: String) throws {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ConfigurationError.file(path, "cannot be read: \(error.localizedDescription)")
        }
        let node: Node?
        do { node = try Yams.compose(yaml: text) } catch {
            throw ConfigurationError.file(path, "is not valid YAML: \(error)")
        }
        guard let node else { return }
        let known = Set(keys.map(\.name))
        var found: [String] = []
        var lists: [String] = []
        func walk(_ node: Node, _ prefix: String) {
            guard let mapping = node.mapping else {
                found.append(prefix)
                // Every value is one scalar (lists are comma-separated strings): a YAML list read
                // as no value at all would silently be the default.
                if node.sequence != nil { lists.append(prefix) }
                return
            }
            for (key, value) in mapping {
                let name = prefix.isEmpty ? (key.string ?? "") : prefix + "." + (key.string ?? "")
                walk(value, name)
            }
        }
        walk(node, "")
        for key in found where !known.contains(key) {
            throw ConfigurationError.unknownKey(key, file: path)
        }
        if let key = lists.first {
            // Keys that take several values take them as one comma-separated string: say so for those.
            let several = Self.keys.first { $0.name == key }?.help.contains("comma") == true
            throw ConfigurationError.file(
                path, "gives \(key) a YAML list; it takes one value" + (several ? " (several as one comma-separated string)" : ""))
        }
    }

    struct Values {
        let reader: ConfigReader
        func string(_ key: String, secret: Bool = false) -> String? {
            let value = reader.string(forKey: ConfigKey(key.split(separator: ".").map(String.init)), isSecret: secret)?
                .trimmingCharacters(in: .whitespacesAndNewlines)
            return value?.isEmpty == true ? nil : value
        }

        /// The value given, or the key's default from the keys table.
        func value(_ key: String) -> String? { string(key) ?? ServiceConfiguration.key(key).defaultValue }
    }

    init(reading values: Values, workingDirectory: String) throws {
        func invalid(_ key: String, _ value: String, _ allowed: String) -> ConfigurationError {
            .invalid(key: key, value: value, allowed: allowed)
        }
        func integer(_ key: String, _ range: ClosedRange<Int>) throws -> Int {
            guard let text = values.value(key) else { preconditionFailure("\(key) has no default") }
            guard let number = Int(text), range.contains(number) else {
                throw invalid(key, text, "a whole number from \(range.lowerBound) to \(range.upperBound)")
            }
            return number
        }
        /// The password `key` (a secret), or the contents of the file `<key>_file`; nil when neither is set.
        func password(_ key: String) throws -> String? {
            if let password = values.string(key, secret: true) { return password }
            guard let file = values.string(key + "_file") else { return nil }
            do {
                return try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            } catch {
                throw invalid(key + "_file", file, "a readable file holding the password")
            }
        }
        func duration(_ key: String, allowZero: Bool = false) throws -> Duration {
            guard let text = values.value(key) else { preconditionFailure("\(key) has no default") }
            guard let parsed = Self.duration(text), allowZero || parsed > .zero else {
                throw invalid(key, text, "\(Self.durationForm)\(allowZero ? " (0 for none)" : ", more than 0")")
            }
            return parsed
        }

        let redactText = values.value("log.redact_params") ?? ""
        let redactParameters = redactText.lowercased() == "none" ? [] : redactText.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        guard redactParameters.allSatisfy({ !$0.isEmpty && $0.allSatisfy { $0.isLetter || $0.isNumber || "-_.".contains($0) } }) else {
            throw invalid("log.redact_params", redactText, "comma-separated query parameter names (letters, digits, '-', '_', '.'), or none")
        }
        redactor = Redactor(parameters: redactParameters)
        let urlText = values.value("broker.url") ?? ""
        do {
            brokerURLs = try AMQPURL.list(urlText)
        } catch {
            // The URL as given may hold the password: never shown.
            throw invalid("broker.url", redactor.url(urlText), "amqp://user:password@host:port/vhost or amqps://…, or several separated by commas (\(error))")
        }
        if let password = try password("broker.password") { for index in brokerURLs.indices { brokerURLs[index].password = password } }
        queue = values.value("queue.name") ?? ""
        guard queue.utf8.count <= 200, queue.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) else {
            throw invalid("queue.name", queue, "letters, digits, '-', '_' and '.', at most 200 characters")
        }
        let typeText = values.value("queue.type") ?? ""
        guard let type = QueueType(rawValue: typeText.lowercased()) else { throw invalid("queue.type", typeText, "classic or quorum") }
        queueType = type
        maxQueueLength = try values.string("queue.max_length").map { _ in try integer("queue.max_length", 1...100_000_000) }
        deliveryLimit = try integer("queue.delivery_limit", Topology.deliveryLimits)
        concurrency = try integer("worker.concurrency", 1...4_096)
        prefetch = UInt16(try integer("worker.prefetch", 1...65_535))
        reservedForCritical = try integer("worker.reserved_critical", 0...1_024)
        capabilities = Set((values.string("worker.capabilities") ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty })
        shutdownGrace = try duration("worker.shutdown_grace")
        let timeout = try duration("worker.default_timeout", allowZero: true)
        defaultTimeout = timeout == .zero ? nil : timeout
        maxRetries = try integer("retry.max_retries", 0...100)
        let base = try duration("retry.base_delay")
        let cap = try duration("retry.max_delay")
        guard cap >= base else {
            throw invalid("retry.max_delay", values.value("retry.max_delay") ?? "\(cap)", "at least retry.base_delay (\(values.value("retry.base_delay") ?? "\(base)"))")
        }
        retryPolicy = RetryPolicy(baseDelay: base, maxDelay: cap)
        if let file = values.string("handlers.file") {
            let path = file.hasPrefix("/") ? file : workingDirectory + "/" + file
            guard FileManager.default.fileExists(atPath: path) else { throw invalid("handlers.file", file, "an existing YAML file") }
            handlersFile = path
        } else {
            let fallback = workingDirectory + "/handlers.yaml"
            handlersFile = FileManager.default.fileExists(atPath: fallback) ? fallback : nil
        }
        let address = values.value("http.address") ?? ""
        if address.lowercased() == "off" {
            httpAddress = nil
        } else {
            guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]), (0...65_535).contains(port),
                  !address[..<colon].isEmpty else {
                throw invalid("http.address", address, "host:port, such as 127.0.0.1:9090 or 0.0.0.0:9090, or off")
            }
            httpAddress = (String(address[..<colon]), port)
        }
        let formatText = values.value("log.format") ?? ""
        guard let format = LogFormat(rawValue: formatText.lowercased()) else { throw invalid("log.format", formatText, "auto, text or json") }
        logFormat = format
        let levelText = values.value("log.level") ?? ""
        guard let level = Logger.Level(rawValue: levelText.lowercased()) else {
            throw invalid("log.level", levelText, "trace, debug, info, notice, warning, error or critical")
        }
        logLevel = level
        let eventsText = values.value("events.enabled") ?? ""
        guard let events = Self.boolean(eventsText) else { throw invalid("events.enabled", eventsText, "true or false (or yes/no, on/off, 1/0)") }
        publishesEvents = events
        recentJobs = try integer("jobs.recent", 0...10_000_000)
        if let stateText = values.string("state.url") {
            do {
                stateURL = try RedisURL(stateText)
            } catch {
                // The URL as given may hold the password (or a secret query value): never shown.
                throw invalid("state.url", redactor.url(stateText), "redis://[user:password@]host:port/db (\(error))")
            }
            if let statePassword = try password("state.password") { stateURL?.password = statePassword }
        } else {
            stateURL = nil
        }
        stateLease = try duration("state.lease")
        guard stateLease >= .seconds(1), stateLease <= .seconds(3_600) else {
            throw invalid("state.lease", values.value("state.lease") ?? "\(stateLease)", "from 1s to 1h")
        }
        stateRetention = try duration("state.retention")
        guard stateRetention >= .seconds(60) else {
            throw invalid("state.retention", values.value("state.retention") ?? "\(stateRetention)", "from 1m to 720h, longer than your longest job")
        }
        stateResultLimit = try integer("state.result_limit", 0...(64 << 20))
        guard reservedForCritical < concurrency || reservedForCritical == 0 else {
            throw invalid("worker.reserved_critical", "\(reservedForCritical)", "less than worker.concurrency (\(concurrency))")
        }
    }

    /// The queue's broker objects as this configuration declares them.
    public var topology: Topology {
        Topology(queue: queue, queueType: queueType, maxLength: maxQueueLength, deliveryLimit: deliveryLimit)
    }

    /// The tools (`submit`, `queues`, `dead-letters`) for `queue` (default: the configured one).
    public func tools(queue name: String? = nil) -> AMQPTools {
        AMQPTools(urls: brokerURLs, topology: name.map { Topology(queue: $0, queueType: queueType) } ?? topology)
    }

    /// The longest duration any key, handler field or flag takes.
    public static let longestDuration = Duration.seconds(30 * 86_400)
    /// What a duration may be, for error messages.
    public static let durationForm = "a duration such as 500ms, 30s, 5m or 1h, at most 720h (30 days)"

    /// `500ms`, `30s`, `5m`, `1h`, or a plain number of seconds, from 0 to `longestDuration`
    /// (checked before conversion: `1e300ms` is refused, not a trap); nil otherwise.
    public static func duration(_ text: String) -> Duration? {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3_600)]
        let (number, scale) = units.first { text.hasSuffix($0.0) }.map { (Double(text.dropLast($0.0.count)), $0.1) } ?? (Double(text), 1)
        guard let number, number.isFinite else { return nil }
        let millis = (number * scale * 1_000).rounded()
        guard millis >= 0, millis <= Double(longestDuration.components.seconds * 1_000) else { return nil }
        return .milliseconds(Int64(millis))
    }

    static func boolean(_ text: String) -> Bool? {
        switch text.lowercased() {
        case "true", "yes", "on", "1": true
        case "false", "no", "off", "0": false
        default: nil
        }
    }

    /// A summary for `config check` and the start-up log line (no password).
    public var summary: [(String, String)] {
        [
            ("broker.url", brokerURLs.map(\.description).joined(separator: ",")),
            ("queue.name", queue), ("queue.type", queueType.rawValue),
            ("queue.max_length", maxQueueLength.map(String.init) ?? "unbounded"),
            ("queue.delivery_limit", "\(deliveryLimit)"),
            ("worker.concurrency", "\(concurrency)"), ("worker.prefetch", "\(prefetch)"),
            ("worker.reserved_critical", "\(reservedForCritical)"),
            ("worker.capabilities", capabilities.sorted().joined(separator: ",")),
            ("worker.shutdown_grace", "\(shutdownGrace)"), ("worker.default_timeout", defaultTimeout.map { "\($0)" } ?? "none"),
            ("retry.max_retries", "\(maxRetries)"), ("retry.base_delay", "\(retryPolicy.baseDelay)"),
            ("retry.max_delay", "\(retryPolicy.maxDelay)"),
            ("handlers.file", handlersFile ?? "none"),
            ("http.address", httpAddress.map { "\($0.host):\($0.port)" } ?? "off"),
            ("log.format", logFormat.rawValue), ("log.level", logLevel.rawValue),
            ("events.enabled", "\(publishesEvents)"), ("jobs.recent", "\(recentJobs)"),
            ("log.redact_params", redactor.parameters.isEmpty ? "none" : redactor.parameters.joined(separator: ",")),
            ("state.url", stateURL.map(\.description) ?? "none"),
            ("state.lease", "\(stateLease)"), ("state.retention", "\(stateRetention)"), ("state.result_limit", "\(stateResultLimit)"),
        ]
    }
}

/// Why the configuration was refused.
public enum ConfigurationError: Error, CustomStringConvertible, Equatable {
    case invalid(key: String, value: String, allowed: String)
    case unknownKey(String, file: String)
    case file(String, String)
    case handlers(file: String, String)

    public var description: String {
        switch self {
        case let .invalid(key, value, allowed):
            let env = ServiceConfiguration.Key(key, nil, "").environmentVariable
            return "configuration: \(key) (\(env)) is '\(value)'; allowed: \(allowed)"
        case let .unknownKey(key, file):
            return "configuration: unknown key '\(key)' in \(file); known keys: \(ServiceConfiguration.keys.map(\.name).joined(separator: ", "))"
        case let .file(path, problem):
            return "configuration: the config file \(path) \(problem)"
        case let .handlers(file, problem):
            return "handlers file \(file): \(problem)"
        }
    }
}
