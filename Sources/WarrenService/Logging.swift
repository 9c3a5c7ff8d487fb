import Foundation
public import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Log lines on stderr: human-readable text, or one JSON object per line (for log collectors).
public struct WarrenLogHandler: LogHandler {
    public enum Format: Sendable { case text, json }

    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    private let label: String
    private let format: Format
    private let sink: LogSink

    public init(label: String, format: Format, level: Logger.Level, sink: LogSink = .standardError) {
        self.label = label
        self.format = format
        self.logLevel = level
        self.sink = sink
    }

    /// Sets up swift-log for the process: `auto` is text on a terminal, JSON lines otherwise.
    public static func bootstrap(_ format: ServiceConfiguration.LogFormat, level: Logger.Level) {
        let resolved: Format = switch format {
        case .text: .text
        case .json: .json
        case .auto: isatty(STDERR_FILENO) == 1 ? .text : .json
        }
        LoggingSystem.bootstrap { label in WarrenLogHandler(label: label, format: resolved, level: level) }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = self.metadata
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        let now = Date()
        switch format {
        case .text:
            let fields = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            let time = now.formatted(.iso8601.time(includingFractionalSeconds: true))
            sink.write("\(time) \(event.level.rawValue.uppercased().padding(toLength: 7, withPad: " ", startingAt: 0)) \(event.message)\(fields.isEmpty ? "" : "  " + fields)\n")
        case .json:
            var object: [String: Any] = [
                "time": now.formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted)),
                "level": event.level.rawValue, "message": "\(event.message)", "logger": label,
            ]
            for (key, value) in merged { object[key] = Self.json(value) }
            if let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) {
                sink.write(String(decoding: data, as: UTF8.self) + "\n")
            }
        }
    }

    private static func json(_ value: Logger.MetadataValue) -> Any {
        switch value {
        case let .string(text): text
        case let .stringConvertible(convertible): convertible.description
        case let .array(values): values.map(json)
        case let .dictionary(values): values.mapValues(json)
        }
    }
}

/// Where log lines go: stderr, or a buffer (tests).
public final class LogSink: Sendable {
    private let capturing: Bool
    private let lines = Mutex<[String]>([])

    private init(capturing: Bool) { self.capturing = capturing }

    public static let standardError = LogSink(capturing: false)
    public static func capture() -> LogSink { LogSink(capturing: true) }

    public var captured: [String] { lines.withLock { $0 } }

    func write(_ line: String) {
        if capturing {
            lines.withLock { $0.append(line) }
            return
        }
        var bytes = Array(line.utf8)
        // One write per line: lines from concurrent jobs never interleave.
        _ = bytes.withUnsafeMutableBytes { Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }
}
