import DequeModule

/// Five FIFO lanes, one per priority: the highest non-empty lane is served first, and equal
/// priorities leave in arrival order. O(1) push and pop; used by every broker's local ready set.
package struct PriorityLanes<Element> {
    private var lanes: [Deque<Element>] = Array(repeating: Deque(), count: JobPriority.allCases.count)

    public init() {}

    public var isEmpty: Bool { lanes.allSatisfy(\.isEmpty) }
    public var count: Int { lanes.reduce(0) { $0 + $1.count } }
    public func count(_ priority: JobPriority) -> Int { lanes[priority.rawValue].count }

    public mutating func append(_ element: Element, priority: JobPriority) {
        lanes[priority.rawValue].append(element)
    }

    /// Removes and returns the first element, in priority order, no lower than `lowest`, for which
    /// `accept` says `.take`. Elements for which it says `.drop` are removed on the way (stale entries).
    public mutating func removeFirst(
        lowest: JobPriority = .background, where accept: (Element) -> LaneDecision
    ) -> Element? {
        for lane in 0...lowest.rawValue {
            var index = lanes[lane].startIndex
            while index < lanes[lane].endIndex {
                switch accept(lanes[lane][index]) {
                case .take:
                    return lanes[lane].remove(at: index)
                case .drop:
                    lanes[lane].remove(at: index)
                case .skip:
                    index += 1
                }
            }
        }
        return nil
    }
}

package enum LaneDecision { case take, skip, drop }
