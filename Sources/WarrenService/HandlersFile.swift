public import Foundation
public import Warren
import Yams

/// The handlers file: job names mapped to `http` or `exec` handlers, each with its own timeout,
/// retries, backoff, concurrency and required capabilities. `${NAME}` and `${NAME:-default}` are
/// replaced from the environment before the YAML is read.
///
/// ```yaml
/// handlers:
///   orders.confirm:
///     http:
///       url: ${ORDERS_URL:-http://orders:8000}/confirm
///       headers: { Authorization: "Bearer ${ORDERS_TOKEN}" }
///     timeout: 10s
///     retries: 5
///     backoff: { base: 2s, max: 1m }
///     concurrency: 4
///   reports.render:
///     exec:
///       command: [/usr/local/bin/render, --format, pdf]
///       env: { MODE: fast }
///       inherit_env: [REPORTS_DB_URL]
///     timeout: 2m
/// ```
public struct HandlersFile: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public enum Action: Sendable, Equatable {
            case http(HTTPAction)
            case exec(ExecAction)
        }

        public var name: String
        public var action: Action
        /// Per attempt; nil: `worker.default_timeout`.
        public var timeout: Duration?
        public var retries: Int?
        public var backoff: RetryPolicy?
        /// Most jobs of this name running at once in this worker; nil: only the worker's limit.
        public var concurrency: Int?
        public var capabilities: Set<String>

        /// The entry as `config check` shows it: the URL redacted, of a command the program only.
        public func shown(_ redactor: Redactor) -> String {
            let what = switch action {
            case let .http(http): "http \(http.method) \(redactor.url(http.url.absoluteString))"
            case let .exec(exec): "exec \(exec.command[0])"
            }
            return "\(what), timeout \(timeout.map { "\($0)" } ?? "worker.default_timeout")\(concurrency.map { ", concurrency \($0)" } ?? "")"
        }
    }

    public struct HTTPAction: Sendable, Equatable {
        public var url: URL
        public var method: String
        public var headers: [String: String]
    }

    public struct ExecAction: Sendable, Equatable {
        public var command: [String]
        /// Set for the command (`env`), on top of the few variables every command gets.
        public var environment: [String: String]
        public var workingDirectory: String?
        /// Variables of Warren's own environment the command also gets (`inherit_env`).
        public var inheritedEnvironment: [String] = []
    }

    public var entries: [Entry]

    /// Reads and validates a handlers file. `redactor` hides secrets of URLs in its errors.
    public static func load(
        path: String, environment: [String: String] = ProcessInfo.processInfo.environment, redactor: Redactor = Redactor()
    ) throws -> HandlersFile {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ConfigurationError.handlers(file: path, "cannot be read: \(error.localizedDescription)")
        }
        return try parse(text, file: path, environment: environment, redactor: redactor)
    }

    static func parse(_ text: String, file: String, environment: [String: String], redactor: Redactor = Redactor()) throws -> HandlersFile {
        func fail(_ problem: String) -> ConfigurationError { .handlers(file: file, problem) }
        let expanded = try expand(text, environment: environment, file: file)
        let raw: RawFile
        do { raw = try YAMLDecoder().decode(RawFile.self, from: expanded) } catch let error as DecodingError {
            throw fail(describeYAML(error))
        } catch {
            throw fail("is not valid YAML: \(error)")
        }
        var entries: [Entry] = []
        for (name, entry) in raw.handlers.sorted(by: { $0.key < $1.key }) {
            let at = "handler '\(name)'"
            guard !name.isEmpty, name.utf8.count <= 255 else { throw fail("\(at): a job name must be 1 to 255 characters") }
            let action: Entry.Action
            switch (entry.http, entry.exec) {
            case let (http?, nil):
                guard let url = URL(string: http.url), let scheme = url.scheme?.lowercased(), ["http", "https"].contains(scheme), url.host != nil else {
                    throw fail("\(at): http.url '\(redactor.url(http.url))' is not an http:// or https:// URL")
                }
                let method = (http.method ?? "POST").uppercased()
                guard ["POST", "PUT", "PATCH"].contains(method) else { throw fail("\(at): http.method '\(method)' must be POST, PUT or PATCH") }
                action = .http(HTTPAction(url: url, method: method, headers: http.headers ?? [:]))
            case let (nil, exec?):
                guard let program = exec.command.first, !program.isEmpty else { throw fail("\(at): exec.command must name a program") }
                let inherited = exec.inherit_env ?? []
                if let bad = inherited.first(where: { $0.isEmpty || $0.contains("=") }) {
                    throw fail("\(at): exec.inherit_env '\(bad)' is not a variable name")
                }
                action = .exec(ExecAction(
                    command: exec.command, environment: exec.env ?? [:], workingDirectory: exec.workdir, inheritedEnvironment: inherited))
            case (nil, nil):
                throw fail("\(at): give it an http or an exec section")
            case (.some, .some):
                throw fail("\(at): give it an http or an exec section, not both")
            }
            func duration(_ text: String?, _ field: String, default fallback: Duration) throws -> Duration {
                guard let text else { return fallback }
                guard let value = ServiceConfiguration.duration(text), value > .zero else {
                    throw fail("\(at): \(field) '\(text)' is not \(ServiceConfiguration.durationForm), more than 0")
                }
                return value
            }
            let timeout = try entry.timeout.map { try duration($0, "timeout", default: .zero) }
            if let retries = entry.retries, !(0...100).contains(retries) { throw fail("\(at): retries \(retries) must be 0 to 100") }
            if let concurrency = entry.concurrency, !(1...4_096).contains(concurrency) {
                throw fail("\(at): concurrency \(concurrency) must be 1 to 4096")
            }
            var backoff: RetryPolicy?
            if let raw = entry.backoff {
                let base = try duration(raw.base, "backoff.base", default: .seconds(1))
                let cap = try duration(raw.max, "backoff.max", default: .seconds(300))
                guard cap >= base else { throw fail("\(at): backoff.max must be at least backoff.base") }
                let multiplier = raw.multiplier ?? 2, jitter = raw.jitter ?? 0.2
                guard (1...10).contains(multiplier) else { throw fail("\(at): backoff.multiplier \(multiplier) must be 1 to 10") }
                guard (0...1).contains(jitter) else { throw fail("\(at): backoff.jitter \(jitter) must be 0 to 1") }
                backoff = RetryPolicy(baseDelay: base, multiplier: multiplier, maxDelay: cap, jitter: jitter)
            }
            entries.append(Entry(
                name: name, action: action, timeout: timeout, retries: entry.retries, backoff: backoff, concurrency: entry.concurrency,
                capabilities: Set(entry.capabilities ?? [])))
        }
        return HandlersFile(entries: entries)
    }

    /// Replaces `${NAME}` and `${NAME:-default}`; an unset name without a default is an error.
    static func expand(_ text: String, environment: [String: String], file: String) throws -> String {
        var output = ""
        var rest = Substring(text)
        while let start = rest.range(of: "${") {
            output += rest[..<start.lowerBound]
            guard let end = rest[start.upperBound...].firstIndex(of: "}") else {
                throw ConfigurationError.handlers(file: file, "an unclosed ${ in '\(rest[start.lowerBound...].prefix(40))'")
            }
            let inner = rest[start.upperBound..<end]
            let name: Substring, fallback: Substring?
            if let separator = inner.range(of: ":-") {
                name = inner[..<separator.lowerBound]
                fallback = inner[separator.upperBound...]
            } else {
                name = inner
                fallback = nil
            }
            if let value = environment[String(name)], !value.isEmpty {
                output += value
            } else if let fallback {
                output += fallback
            } else {
                throw ConfigurationError.handlers(file: file, "${\(name)} is not set in the environment and has no default (${\(name):-…})")
            }
            rest = rest[rest.index(after: end)...]
        }
        output += rest
        return output
    }

    private static func describeYAML(_ error: DecodingError) -> String {
        let context: DecodingError.Context
        switch error {
        case let .keyNotFound(key, c): return "missing '\(key.stringValue)' at \(path(c.codingPath))"
        case let .typeMismatch(_, c), let .valueNotFound(_, c), let .dataCorrupted(c): context = c
        @unknown default: return "\(error)"
        }
        return "\(path(context.codingPath)): \(context.debugDescription)"
    }

    private static func path(_ keys: [any CodingKey]) -> String {
        keys.isEmpty ? "the top level" : keys.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
    }

    private struct RawFile: Decodable {
        var handlers: [String: RawEntry]

        enum CodingKeys: String, CodingKey { case handlers }

        init(from decoder: any Decoder) throws {
            // Worker settings belong in the configuration file: a key here would be ignored.
            let container = try decoder.container(keyedBy: AnyKey.self)
            for key in container.allKeys where key.stringValue != "handlers" {
                throw DecodingError.dataCorruptedError(
                    forKey: key, in: container,
                    debugDescription: "unknown top-level key '\(key.stringValue)'; a handlers file has only 'handlers' (worker settings such as worker.concurrency go in the configuration file, --config)")
            }
            handlers = try decoder.container(keyedBy: CodingKeys.self).decode([String: RawEntry].self, forKey: .handlers)
        }
    }

    private struct RawEntry: Decodable {
        struct HTTP: Decodable {
            var url: String
            var method: String?
            var headers: [String: String]?
        }
        struct Exec: Decodable {
            var command: [String]
            var env: [String: String]?
            var workdir: String?
            var inherit_env: [String]?
        }
        struct Backoff: Decodable {
            var base: String?
            var max: String?
            var multiplier: Double?
            var jitter: Double?
        }
        var http: HTTP?
        var exec: Exec?
        var timeout: String?
        var retries: Int?
        var backoff: Backoff?
        var concurrency: Int?
        var capabilities: [String]?

        enum CodingKeys: String, CodingKey { case http, exec, timeout, retries, backoff, concurrency, capabilities }

        init(from decoder: any Decoder) throws {
            // Unknown fields are typos: refuse them rather than ignore a setting.
            let container = try decoder.container(keyedBy: AnyKey.self)
            for key in container.allKeys where CodingKeys(rawValue: key.stringValue) == nil {
                throw DecodingError.dataCorruptedError(
                    forKey: key, in: container,
                    debugDescription: "unknown field '\(key.stringValue)'; fields are http, exec, timeout, retries, backoff, concurrency, capabilities")
            }
            let fields = try decoder.container(keyedBy: CodingKeys.self)
            http = try fields.decodeIfPresent(HTTP.self, forKey: .http)
            exec = try fields.decodeIfPresent(Exec.self, forKey: .exec)
            timeout = try fields.decodeIfPresent(String.self, forKey: .timeout)
            retries = try fields.decodeIfPresent(Int.self, forKey: .retries)
            backoff = try fields.decodeIfPresent(Backoff.self, forKey: .backoff)
            concurrency = try fields.decodeIfPresent(Int.self, forKey: .concurrency)
            capabilities = try fields.decodeIfPresent([String].self, forKey: .capabilities)
        }
    }

    private struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }
}
