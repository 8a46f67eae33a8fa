// Package spool stores message bodies on disk, one file per message, named by queue ID. A body is
// written once, fsynced, and never changed afterwards; readers stream it. The spool does not know
// about envelopes or delivery state (that is the queue's job) and does not decide when a message
// is acknowledged: Commit makes the bytes durable, SyncDir makes the new names durable, and the
// queue calls both before it commits its rows.
package spool

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/postamt/postamt/internal/smtp"
)

// FS is the part of the file system the spool uses. Tests replace it to make writes, fsyncs or
// directory syncs fail and check that no message is acknowledged.
type FS interface {
	Create(name string) (File, error) // exclusive create
	Open(name string) (*os.File, error)
	Remove(name string) error
	SyncDir(dir string) error
	ReadDir(dir string) ([]os.DirEntry, error)
}

// File is a spool file being written.
type File interface {
	io.Writer
	Sync() error
	Close() error
}

// OS is the real file system.
type OS struct{}

func (OS) Create(name string) (File, error) {
	return os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
}
func (OS) Open(name string) (*os.File, error)        { return os.Open(name) }
func (OS) Remove(name string) error                  { return os.Remove(name) }
func (OS) ReadDir(dir string) ([]os.DirEntry, error) { return os.ReadDir(dir) }
func (OS) SyncDir(dir string) error                  { return SyncDir(dir) }

// SyncDir fsyncs a directory so that names created in it survive a crash. Without it a body can
// be on disk while its directory entry is not (chasquid and maddy skip this; mox does it).
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Spool is a directory of message bodies.
type Spool struct {
	dir string
	fs  FS
}

// New opens (creating if needed) the spool directory. fs may be nil for the real file system.
func New(dir string, fs FS) (*Spool, error) {
	if fs == nil {
		fs = OS{}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	return &Spool{dir: dir, fs: fs}, nil
}

// Dir returns the spool directory.
func (s *Spool) Dir() string { return s.dir }

func (s *Spool) path(id string) string { return filepath.Join(s.dir, id) }

// ErrStorageFull is returned (wrapped in a 452 reply) when the disk is full, so the client retries
// later instead of the message being lost (RFC 5321 §4.2.5, RFC 3463 4.3.1).
var ErrStorageFull = smtp.NewReply(452, smtp.CodeSystemFull, "Insufficient system storage, try again later")

func classify(op string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return ErrStorageFull.WithErr(fmt.Errorf("spool: %s: %w", op, err))
	}
	return fmt.Errorf("spool: %s: %w", op, err)
}

// Create starts a new body file for id.
func (s *Spool) Create(id string) (*Writer, error) {
	f, err := s.fs.Create(s.path(id))
	if err != nil {
		return nil, classify("create", err)
	}
	return &Writer{s: s, id: id, f: f, bw: bufio.NewWriterSize(f, 32<<10)}, nil
}

// Open opens a committed body for reading.
func (s *Spool) Open(id string) (*os.File, error) {
	f, err := s.fs.Open(s.path(id))
	if err != nil {
		return nil, fmt.Errorf("spool: open %s: %w", id, err)
	}
	return f, nil
}

// Remove deletes a body whose message is finished.
func (s *Spool) Remove(id string) error {
	if err := s.fs.Remove(s.path(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("spool: remove %s: %w", id, err)
	}
	return nil
}

// SyncDir makes the names of committed bodies durable. The queue calls it once per group commit.
func (s *Spool) SyncDir() error {
	if err := s.fs.SyncDir(s.dir); err != nil {
		return classify("sync dir", err)
	}
	return nil
}

// List returns the IDs of all bodies in the spool, for the start-up consistency check.
func (s *Spool) List() ([]string, error) {
	ents, err := s.fs.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("spool: list: %w", err)
	}
	ids := make([]string, 0, len(ents))
	for _, e := range ents {
		if e.Type().IsRegular() {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// Writer streams one body into the spool.
type Writer struct {
	s      *Spool
	id     string
	f      File
	bw     *bufio.Writer
	n      int64
	err    error
	closed bool
}

// ID is the queue ID the body is stored under.
func (w *Writer) ID() string { return w.id }

// Size is the number of bytes written so far.
func (w *Writer) Size() int64 { return w.n }

func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.bw.Write(p)
	w.n += int64(n)
	if err != nil {
		w.err = classify("write", err)
	}
	return n, w.err
}

// WriteString writes s.
func (w *Writer) WriteString(s string) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.bw.WriteString(s)
	w.n += int64(n)
	if err != nil {
		w.err = classify("write", err)
	}
	return n, w.err
}

// Commit flushes and fsyncs the body and closes the file. The name is durable only after the
// queue's next SyncDir.
func (w *Writer) Commit() error {
	if w.err != nil {
		return w.err
	}
	if err := w.bw.Flush(); err != nil {
		w.err = classify("write", err)
		return w.err
	}
	if err := w.f.Sync(); err != nil {
		w.err = classify("fsync", err)
		return w.err
	}
	w.closed = true
	if err := w.f.Close(); err != nil {
		w.err = classify("close", err)
		return w.err
	}
	return nil
}

// Abort discards the body when the transaction fails before the queue took it. It is safe after
// a failed Commit.
func (w *Writer) Abort() {
	if !w.closed {
		w.f.Close()
		w.closed = true
	}
	w.s.fs.Remove(w.s.path(w.id))
}
