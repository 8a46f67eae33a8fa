package maildir

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to start writing f's data now. Called for every file of a batch
// before the first fsync, it lets the file system allocate all their blocks in one journal
// transaction, so the first fsync commits it for everyone and the others only wait for their own
// data (measured here: ~290 µs of CPU per file with plain fsyncs, ~75 µs with this).
func startWriteback(f *os.File) {
	unix.SyncFileRange(int(f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
}
