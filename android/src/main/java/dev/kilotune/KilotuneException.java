package dev.kilotune;

/**
 * A kilotune call failed. {@link #status()} is the C library's status code (the
 * {@code KT_ERR_*} constants of {@code kilotune.h}, mirrored here); the numbers never change.
 */
public final class KilotuneException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** A required argument was null. */
    public static final int NULL_ARGUMENT = 1;
    /** An argument is out of range (an unknown constant, a size that overflows, a bad index). */
    public static final int INVALID_ARGUMENT = 2;
    /** A configuration value is invalid (rank 0, a method that selects no parameter...). */
    public static final int CONFIG = 3;
    /** A file could not be read or written. */
    public static final int IO = 4;
    /** The model file is not one kilotune can load. */
    public static final int MODEL = 5;
    /** The inputs do not fit the model (sizes, a label out of range). */
    public static final int INPUT = 6;
    /** A delta file is corrupt. */
    public static final int DELTA_CORRUPT = 7;
    /** A delta file has a format version this build cannot read. */
    public static final int DELTA_VERSION = 8;
    /** A delta was trained on another base model. */
    public static final int DELTA_WRONG_BASE = 9;
    /** The library panicked; close the object involved. */
    public static final int PANIC = 10;
    /** An error the library could not classify (a bug). */
    public static final int INTERNAL = 11;

    private final int status;

    /** Called by the native library. */
    KilotuneException(int status, String message) {
        super(message);
        this.status = status;
    }

    /** The status code: one of the constants of this class. */
    public int status() {
        return status;
    }
}
