import KilotuneFFI

/// Tokenized rows as plain arrays, row-major, `rows * seqLen` values each, and one class label
/// per row for training (none for `Session.run`).
public struct Batch {
    public var rows: Int
    public var seqLen: Int
    public var inputIds: [Int64]
    public var attentionMask: [Int64]
    public var tokenTypeIds: [Int64]?
    public var labels: [UInt32]?

    public init(rows: Int, seqLen: Int, inputIds: [Int64], attentionMask: [Int64], tokenTypeIds: [Int64]? = nil, labels: [UInt32]? = nil) {
        self.rows = rows
        self.seqLen = seqLen
        self.inputIds = inputIds
        self.attentionMask = attentionMask
        self.tokenTypeIds = tokenTypeIds
        self.labels = labels
    }

    /// Calls `body` with a `kt_tokens` over this batch's arrays, valid only inside `body`.
    func withTokens<R>(_ body: (kt_tokens) throws -> R) rethrows -> R {
        try inputIds.withUnsafeBufferPointer { ids in
            try attentionMask.withUnsafeBufferPointer { mask in
                try withOptional(tokenTypeIds) { types in
                    try body(kt_tokens(rows: rows, seq_len: seqLen, input_ids: ids.baseAddress,
                                       attention_mask: mask.baseAddress, token_type_ids: types))
                }
            }
        }
    }

    /// Calls `body` with a `kt_batch` (tokens and labels), valid only inside `body`.
    func withBatch<R>(_ body: (kt_batch) throws -> R) throws -> R {
        guard let labels else {
            throw KilotuneError(status: KilotuneError.nullArgument, message: "this batch has no labels")
        }
        return try withTokens { tokens in
            try labels.withUnsafeBufferPointer { l in
                try body(kt_batch(tokens: tokens, labels: l.baseAddress))
            }
        }
    }
}

private func withOptional<R>(_ array: [Int64]?, _ body: (UnsafePointer<Int64>?) throws -> R) rethrows -> R {
    guard let array else { return try body(nil) }
    return try array.withUnsafeBufferPointer { try body($0.baseAddress) }
}
