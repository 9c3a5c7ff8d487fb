import Foundation
import Testing
@testable import Warren
import WarrenConformance

/// The core's string helpers stand in for Foundation's (which the libraries no longer import):
/// on seeded random text they must answer as Foundation does (except that percent-decoding refuses
/// bytes that are not UTF-8, where Foundation puts U+FFFD).
@Suite("text helpers")
struct TextTests {
    /// Characters that exercise escapes: `%`, hex digits of both cases, non-hex letters, spaces,
    /// tabs, line breaks and multi-byte characters.
    static let alphabet: [Character] = ["%", "%", "%", "0", "7", "9", "a", "A", "c", "F", "f", "g", "G", "z", " ", "\t", "\n", "\r\n", "é", "€", "😀", "+", "/"]

    @Test(arguments: [1, 2, 3, 4])
    func percentDecodingAndTrimmingMatchFoundation(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        var decoded = 0
        for _ in 0..<20_000 {
            var text = String((0..<Int.random(in: 0...12, using: &random)).map { _ in Self.alphabet.randomElement(using: &random)! })
            // Percent-encoded UTF-8 of a multi-byte character, whole or cut short.
            if Bool.random(using: &random) {
                let bytes = Array("é€😀".utf8)
                let cut = bytes.prefix(Int.random(in: 1...bytes.count, using: &random))
                text += cut.map { "%" + String($0, radix: 16, uppercase: Bool.random(using: &random)) }.joined()
            }
            // Foundation writes bytes that are not UTF-8 as U+FFFD; the helper refuses them.
            let foundation = text.removingPercentEncoding
            if foundation?.contains("\u{FFFD}") == true {
                #expect(text.percentDecoded == nil, "\(text.debugDescription)")
            } else {
                #expect(text.percentDecoded == foundation, "\(text.debugDescription)")
            }
            if text.percentDecoded != nil { decoded += 1 }
            #expect(text.trimmingWhitespace == text.trimmingCharacters(in: .whitespacesAndNewlines), "\(text.debugDescription)")
        }
        // Both answers occur: the comparison covered valid and malformed text.
        #expect(decoded > 1_000 && decoded < 19_000, "\(decoded) of 20,000 decoded")
    }
}

/// What a handler's typed input reports when a payload does not decode.
@Suite("decoding errors")
struct DecodingErrorTests {
    struct Item: Decodable { var cents: Int }
    struct Order: Decodable { var items: [Item] }

    @Test func sayWhichFieldOrWhatKindOfValueIsWrong() {
        func reason(_ body: String) -> String {
            do {
                _ = try JSONDecoder().decode(Order.self, from: Data(body.utf8))
                return "decoded"
            } catch {
                return describe(error, decoding: Order.self)
            }
        }
        #expect(reason(#"{"items":[{"cents":"x"}]}"#).contains("'items.[0].cents' should be Int"))
        #expect(reason(#"{"items":[{}]}"#).contains("missing key 'cents'"))
        // Foundation names no field for a number that does not fit: the reason says that is what it may be.
        for body in [#"{"items":[{"cents":1e30}]}"#, #"{"items":[{"cents":1.5}]}"#] {
            #expect(reason(body).contains("a number its field cannot hold"), "\(reason(body))")
        }
    }
}

@Suite("durations")
struct DurationTests {
    @Test func wholeMillisecondsDropTheRestAndSaturate() {
        #expect(Duration.milliseconds(1_500).wholeMilliseconds == 1_500)
        #expect(Duration.microseconds(2_999).wholeMilliseconds == 2)
        #expect(Duration.seconds(Int64.max).wholeMilliseconds == .max)
        #expect(Duration.seconds(Int64.max / 1_000).wholeMilliseconds == Int64.max / 1_000 * 1_000)
        #expect(Duration.seconds(Int64.min).wholeMilliseconds == .min)
        #expect(Duration.milliseconds(1).timeInterval == 0.001)
    }
}
