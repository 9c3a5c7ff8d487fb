// The few string operations the libraries need from outside the standard library, so that they
// import FoundationEssentials only (full Foundation maps another ~10 MiB of code and ICU data).

extension StringProtocol {
    /// Without leading and trailing spaces, tabs and line breaks.
    package var trimmingWhitespace: String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0.isNewline }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(self[first...last])
    }

    /// `%XX` escapes decoded as UTF-8; nil when an escape is malformed or the bytes are not UTF-8
    /// (as Foundation's `removingPercentEncoding`).
    package var percentDecoded: String? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(utf8.count)
        var iterator = utf8.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else { bytes.append(byte); continue }
            guard let high = iterator.next().flatMap(Self.hexValue), let low = iterator.next().flatMap(Self.hexValue) else { return nil }
            bytes.append(high << 4 | low)
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

extension String {
    /// Where the user-info of this URL text is (before its last `@` ahead of the query), whether
    /// the URL parses or not: a password holding `:`, `/` or `@` is covered whole.
    package var urlUserInfo: Range<String.Index>? {
        let start = firstRange(of: "://")?.upperBound ?? startIndex
        let authorityEnd = self[start...].firstIndex { "?#".contains($0) } ?? endIndex
        guard let at = self[start..<authorityEnd].lastIndex(of: "@") else { return nil }
        return start..<at
    }

    /// This URL text with its user-info's password hidden: `user:***@`, or `***@` when the
    /// user-info is one part (for most schemes a secret).
    package var urlPasswordHidden: String {
        guard let range = urlUserInfo else { return self }
        let info = self[range]
        let shown = info.firstIndex(of: ":").map { "\(info[..<$0]):***" } ?? "***"
        return self[..<range.lowerBound] + shown + self[range.upperBound...]
    }
}
