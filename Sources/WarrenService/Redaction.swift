import Foundation
import WarrenAMQP

/// Hides secrets wherever Warren shows a URL or an error (errors, dead-letter headers, lifecycle
/// events, logs, `/jobs/{id}`, `config check`).
///
/// In a URL: the password of its user-info (`user:***@`, or `***@` when the user-info is one
/// part, such as a token), and the value of every query parameter whose name contains one of
/// `parameters` (case-insensitive: `token` hides `token`, `access_token` and `X-Token`). In free
/// text (a service's answer, a command's stderr): every known secret value. The work is textual,
/// so a URL that does not parse is redacted as well.
public struct Redactor: Sendable, Equatable {
    /// `log.redact_params` unless set.
    public static let defaultParameters = ["token", "key", "secret", "password", "signature"]
    /// Values shorter than this are not looked for in free text: they would hide ordinary words.
    /// (They are still hidden in URLs, by position.)
    static let shortestScrubbedValue = 4

    /// Lowercased words; a query parameter whose name contains one is hidden.
    public let parameters: [String]

    public init(parameters: [String] = Redactor.defaultParameters) {
        self.parameters = parameters.map { $0.lowercased() }.filter { !$0.isEmpty }
    }

    public func hides(parameter name: String) -> Bool {
        let lower = (name.removingPercentEncoding ?? name).lowercased()
        return parameters.contains { lower.contains($0) }
    }

    /// `text` as a URL to show: user-info password and listed query values replaced by `***`.
    public func url(_ text: String) -> String {
        let withoutUser = AMQPURL.redacted(text)
        guard let question = withoutUser.firstIndex(of: "?") else { return withoutUser }
        let queryEnd = withoutUser[question...].firstIndex(of: "#") ?? withoutUser.endIndex
        let items = withoutUser[withoutUser.index(after: question)..<queryEnd].split(separator: "&", omittingEmptySubsequences: false)
        let shown = items.map { item -> String in
            let name = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)[0]
            return hides(parameter: String(name)) && item.contains("=") ? "\(name)=***" : String(item)
        }
        return withoutUser[...question] + shown.joined(separator: "&") + withoutUser[queryEnd...]
    }

    /// The secret parts of a URL, raw and as they appear in it (percent-encoded): the user-info's
    /// password (or the whole user-info when it is one part) and the listed query values.
    public func secrets(inURL text: String) -> [String] {
        var found: [String] = []
        if let range = AMQPURL.userInfo(in: text) {
            let userInfo = text[range]
            found.append(String(userInfo.firstIndex(of: ":").map { userInfo[userInfo.index(after: $0)...] } ?? userInfo))
        }
        if let question = text.firstIndex(of: "?") {
            let query = text[text.index(after: question)...].prefix { $0 != "#" }
            for item in query.split(separator: "&") {
                let parts = item.split(separator: "=", maxSplits: 1)
                if parts.count == 2, hides(parameter: String(parts[0])) { found.append(String(parts[1])) }
            }
        }
        return found.flatMap { [$0, $0.removingPercentEncoding ?? $0] }
    }

    /// `text` with every occurrence of `secrets` (of at least four characters) replaced by `***`.
    public static func scrub(_ text: String, hiding secrets: [String]) -> String {
        // Longest first: a secret that contains another is hidden whole.
        let values = Set(secrets.filter { $0.count >= shortestScrubbedValue }).sorted { $0.count > $1.count }
        var result = text
        for value in values where result.contains(value) {
            result = result.replacingOccurrences(of: value, with: "***")
        }
        return result
    }
}
