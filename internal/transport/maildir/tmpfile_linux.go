package maildir

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// openTmpfile creates an unnamed file in dir (O_TMPFILE, Linux 3.11+ on ext4, XFS, btrfs, tmpfs
// and others). Its inode exists but no directory entry until linkTmpfile gives it one, so a crash
// before then leaves nothing behind, and the create does not take dir's lock.
func openTmpfile(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, &os.PathError{Op: "open O_TMPFILE", Path: dir, Err: err}
	}
	return os.NewFile(uintptr(fd), dir+"/(O_TMPFILE)"), nil
}

// linkTmpfile gives the unnamed file f the name dst; it fails with EEXIST if dst exists. Linking
// by /proc/self/fd needs no privilege; AT_EMPTY_PATH (needs CAP_DAC_READ_SEARCH) serves where
// /proc is not mounted.
func linkTmpfile(f *os.File, dst string) error {
	fd := int(f.Fd())
	err := unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), unix.AT_FDCWD, dst, unix.AT_SYMLINK_FOLLOW)
	if err == unix.ENOENT {
		if _, serr := os.Stat("/proc/self/fd"); serr != nil {
			err = unix.Linkat(fd, "", unix.AT_FDCWD, dst, unix.AT_EMPTY_PATH)
		}
	}
	if err != nil {
		return &os.LinkError{Op: "linkat", Old: f.Name(), New: dst, Err: err}
	}
	return nil
}
