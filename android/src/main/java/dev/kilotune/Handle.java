package dev.kilotune;

/**
 * Owns one native handle: frees it exactly once, on {@link #close()}. Using the object after
 * that throws {@link IllegalStateException}.
 */
abstract class Handle implements AutoCloseable {
    private long handle;

    Handle(long handle) {
        this.handle = handle;
    }

    /** The live handle. */
    final synchronized long handle() {
        if (handle == 0) {
            throw new IllegalStateException(getClass().getSimpleName() + " is closed");
        }
        return handle;
    }

    /** Frees the native object; later calls do nothing. */
    @Override
    public final synchronized void close() {
        if (handle != 0) {
            long h = handle;
            handle = 0;
            free(h);
        }
    }

    abstract void free(long handle);
}
