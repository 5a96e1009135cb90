import KilotuneFFI

/// A failed kilotune call: `status` is the C status code (`KT_ERR_*` in kilotune.h; the numbers
/// never change), `message` what went wrong.
public struct KilotuneError: Error, CustomStringConvertible {
    public static let nullArgument: Int32 = 1
    public static let invalidArgument: Int32 = 2
    public static let config: Int32 = 3
    public static let io: Int32 = 4
    public static let model: Int32 = 5
    public static let input: Int32 = 6
    public static let deltaCorrupt: Int32 = 7
    public static let deltaVersion: Int32 = 8
    public static let deltaWrongBase: Int32 = 9
    public static let panic: Int32 = 10
    public static let `internal`: Int32 = 11

    public let status: Int32
    public let message: String

    public var description: String { "kilotune error \(status): \(message)" }
}

/// Throws the calling thread's last error unless `status` is KT_OK (0).
@inline(__always)
func check(_ status: Int32) throws {
    if status != 0 {
        throw KilotuneError(status: status, message: String(cString: kt_last_error_message()))
    }
}
