//go:build !linux

package maildir

import (
	"errors"
	"os"
)

func openTmpfile(dir string) (*os.File, error) {
	return nil, &os.PathError{Op: "open O_TMPFILE", Path: dir, Err: errors.ErrUnsupported}
}

func linkTmpfile(f *os.File, dst string) error {
	return &os.LinkError{Op: "linkat", Old: f.Name(), New: dst, Err: errors.ErrUnsupported}
}
