import ArgumentParser
import Foundation
import Logging
import Warren
import WarrenAMQP
import WarrenService

/// The settings every broker command shares. Flags win over `WARREN_…` environment variables,
/// which win over the config file, which wins over secret files.
struct ServiceOptions: ParsableArguments {
    @Option(help: "YAML config file (or WARREN_CONFIG).") var config: String?
    @Option(help: "RabbitMQ URL (broker.url, WARREN_BROKER_URL).") var brokerURL: String?
    @Option(help: "Warren queue (queue.name, WARREN_QUEUE_NAME).") var queue: String?
    @Option(help: "classic or quorum, as the worker declares its queues (queue.type, WARREN_QUEUE_TYPE).") var queueType: String?
    @Option(help: "Directory of secret files such as broker-password (WARREN_SECRETS_DIR).") var secretsDir: String?

    /// Flags of this command that set configuration keys.
    var flags: [String: String] {
        var flags: [String: String] = [:]
        if let config { flags["config"] = config }
        if let brokerURL { flags["broker.url"] = brokerURL }
        if let queue { flags["queue.name"] = queue }
        if let queueType { flags["queue.type"] = queueType }
        if let secretsDir { flags["secrets_dir"] = secretsDir }
        return flags
    }

    func load(adding extra: [String: String] = [:]) async throws -> ServiceConfiguration {
        var sources = ServiceConfiguration.Sources()
        sources.flags = flags.merging(extra) { $1 }
        do {
            return try await ServiceConfiguration.load(sources)
        } catch let error as ConfigurationError {
            throw Failure(error.description)
        }
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Consume a Warren queue on RabbitMQ and run its jobs until SIGTERM, then drain.",
        discussion: "Every setting can come from a flag, a WARREN_… environment variable, the config file or a secret file: see `warren config keys`.")

    @OptionGroup var options: ServiceOptions
    @Option(help: "Handlers file (handlers.file).") var handlers: String?
    @Option(help: "Jobs run at once (worker.concurrency).") var concurrency: Int?
    @Option(help: "Operations HTTP address host:port, or off (http.address).") var httpAddress: String?
    @Option(help: "auto, text or json (log.format).") var logFormat: String?
    @Option(help: "Log level (log.level).") var logLevel: String?

    func run() async throws {
        var extra: [String: String] = [:]
        if let handlers { extra["handlers.file"] = handlers }
        if let concurrency { extra["worker.concurrency"] = "\(concurrency)" }
        if let httpAddress { extra["http.address"] = httpAddress }
        if let logFormat { extra["log.format"] = logFormat }
        if let logLevel { extra["log.level"] = logLevel }
        let configuration = try await options.load(adding: extra)
        WarrenLogHandler.bootstrap(configuration.logFormat, level: configuration.logLevel)
        ServiceMetrics.bootstrap()
        let logger = Logger(label: "warren")
        let handlersFile: HandlersFile?
        do {
            handlersFile = try configuration.handlersFile.map { try HandlersFile.load(path: $0, redactor: configuration.redactor) }
        } catch let error as ConfigurationError {
            throw Failure(error.description)
        }
        let service = try WorkerService(configuration: configuration, handlers: handlersFile, logger: logger)
        try await service.run()
    }
}

struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config", abstract: "Check or describe the configuration.", subcommands: [Check.self, Keys.self])

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate the configuration (and the handlers file) without starting; print what serve would use.")
        @OptionGroup var options: ServiceOptions
        @Option(help: "Handlers file (handlers.file).") var handlers: String?

        func run() async throws {
            let configuration = try await options.load(adding: handlers.map { ["handlers.file": $0] } ?? [:])
            var entries: [HandlersFile.Entry] = []
            if let path = configuration.handlersFile {
                do {
                    entries = try HandlersFile.load(path: path, redactor: configuration.redactor).entries
                } catch let error as ConfigurationError {
                    throw Failure(error.description)
                }
            }
            for (key, value) in configuration.summary { print("\(key.padding(toLength: 26, withPad: " ", startingAt: 0)) \(value)") }
            for entry in entries {
                print("handler \(entry.name.padding(toLength: 18, withPad: " ", startingAt: 0)) \(entry.shown(configuration.redactor))")
            }
            print("configuration is valid; \(entries.count) handler(s)")
        }
    }

    struct Keys: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Every configuration key, its environment variable and default.")
        func run() {
            for key in ServiceConfiguration.keys {
                print("\(key.name)\n    env \(key.environmentVariable)   default \(key.shownDefault)\n    \(key.help)")
            }
            print("\nbroker.url query options (amqp://user:password@host:port/vhost?option=value&…)")
            for option in AMQPURL.queryOptions { print("?\(option.name)=\n    \(option.help)") }
        }
    }
}

/// An error printed as is (no usage text): bad configuration, a broker that refuses.
struct Failure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
