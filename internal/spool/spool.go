// Package spool collects message bodies. A small body stays in memory and the queue stores it
// inline in its database; a large one is streamed to a file, one per message, named by queue ID,
// fsynced and never changed afterwards. The spool does not know about envelopes or delivery state
// (that is the queue's job) and does not decide when a message is acknowledged: Commit makes a
// file's bytes durable, SyncDirs makes new names durable, and the queue calls both before it
// commits its rows.
package spool

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"sync"
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

// shards is the number of subdirectories bodies are spread over. Creating and removing files in
// one directory from many goroutines serialises on the directory's lock, and on Linux that costs
// far more CPU than the writes (measured: 10 writers, one directory, ~900 µs of CPU per file; ten
// directories, ~130 µs).
const shards = 32

// New opens (creating if needed) the spool directory. fs may be nil for the real file system.
func New(dir string, fs FS) (*Spool, error) {
	if fs == nil {
		fs = OS{}
	}
	for i := 0; i < shards; i++ {
		if err := os.MkdirAll(filepath.Join(dir, shardName(i)), 0o700); err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
	}
	if err := SyncDir(dir); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	return &Spool{dir: dir, fs: fs}, nil
}

func shardName(i int) string { return fmt.Sprintf("%02x", i) }

// Dir returns the spool directory.
func (s *Spool) Dir() string { return s.dir }

// ShardDir returns the directory that holds the body of id.
func (s *Spool) ShardDir(id string) string {
	h := fnv.New32a()
	h.Write([]byte(id))
	return filepath.Join(s.dir, shardName(int(h.Sum32()%shards)))
}

func (s *Spool) path(id string) string { return filepath.Join(s.ShardDir(id), id) }

// ErrStorageFull is returned (wrapped in a 452 reply) when the disk is full, so the client retries
// later instead of the message being lost (RFC 5321 §4.2.5, RFC 3463 4.3.1).
var ErrStorageFull = smtp.NewReply(452, smtp.CodeSystemFull, "Insufficient system storage, try again later")

func classify(op string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return ErrStorageFull.WithErr(fmt.Errorf("spool: %s: %w", op, err))
	}
	return fmt.Errorf("spool: %s: %w", op, err)
}

// InlineMax is the largest body kept in memory and stored inline in the queue database instead
// of a spool file. Small bodies then cost no file creation, fsync or unlink of their own: they
// reach stable storage in the queue's group commit, one WAL fsync for the whole batch.
const InlineMax = 128 << 10

// Create starts a new body for id. It stays in memory until it grows past InlineMax, then it is
// streamed into a spool file.
func (s *Spool) Create(id string) (*Writer, error) {
	bp := bufPool.Get().(*[]byte)
	return &Writer{s: s, id: id, buf: (*bp)[:0], bufp: bp}, nil
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

func (w *Writer) spill() error {
	f, err := w.s.fs.Create(w.s.path(w.id))
	if err != nil {
		return classify("create", err)
	}
	w.f = f
	w.bw = bufio.NewWriterSize(f, 32<<10)
	_, err = w.bw.Write(w.buf)
	w.releaseBuf()
	if err != nil {
		return classify("write", err)
	}
	return nil
}

func (w *Writer) releaseBuf() {
	if w.bufp != nil {
		if cap(w.buf) <= 256<<10 {
			*w.bufp = w.buf[:0]
			bufPool.Put(w.bufp)
		}
		w.bufp, w.buf = nil, nil
	}
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

// SyncDirs makes the names of committed bodies durable: dirs are the ShardDir values of the
// bodies in one group commit, each synced once.
func (s *Spool) SyncDirs(dirs map[string]bool) error {
	for d := range dirs {
		if err := s.fs.SyncDir(d); err != nil {
			return classify("sync dir", err)
		}
	}
	return nil
}

// List returns the IDs of all bodies in the spool. With a large queue prefer ListShard, which
// holds one shard's names at a time.
func (s *Spool) List() ([]string, error) {
	var ids []string
	for i := 0; i < shards; i++ {
		sh, err := s.ListShard(i)
		if err != nil {
			return nil, err
		}
		ids = append(ids, sh...)
	}
	return ids, nil
}

// Shards is the number of shard directories, for ListShard.
func (s *Spool) Shards() int { return shards }

// ListShard returns the IDs of the bodies in shard i (0 ≤ i < Shards()).
func (s *Spool) ListShard(i int) ([]string, error) {
	ents, err := s.fs.ReadDir(filepath.Join(s.dir, shardName(i)))
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

// Exists reports whether a body is in the spool. It asks the real file system: the injected FS
// exists to fail writes, and the start-up check only reads.
func (s *Spool) Exists(id string) (bool, error) {
	_, err := os.Lstat(s.path(id))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// Writer collects one body: in memory while it is small, in a spool file once it is large.
type Writer struct {
	s      *Spool
	id     string
	buf    []byte // the body while it is inline
	bufp   *[]byte
	f      File // the spool file once spilled
	bw     *bufio.Writer
	n      int64
	err    error
	closed bool
	// prefix holds header fields added after the body spilled to a file (checks and signing
	// run at the end of data); the queue stores it beside the file, which is never rewritten.
	prefix []byte
}

// ID is the queue ID the body is stored under.
func (w *Writer) ID() string { return w.id }

// Inline returns the body when it is small enough to be stored in the queue database. The slice
// is valid until Release.
func (w *Writer) Inline() ([]byte, bool) { return w.buf, w.f == nil && w.err == nil }

// Dir is the directory whose sync makes this body's file name durable; "" for inline bodies.
func (w *Writer) Dir() string {
	if w.f == nil {
		return ""
	}
	return w.s.ShardDir(w.id)
}

// Size is the number of bytes written so far.
func (w *Writer) Size() int64 { return w.n }

func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	w.n += int64(len(p))
	if w.f == nil {
		if len(w.buf)+len(p) <= InlineMax {
			w.buf = append(w.buf, p...)
			return len(p), nil
		}
		if w.err = w.spill(); w.err != nil {
			return 0, w.err
		}
	}
	if _, err := w.bw.Write(p); err != nil {
		w.err = classify("write", err)
		return 0, w.err
	}
	return len(p), nil
}

// WriteString writes s.
func (w *Writer) WriteString(s string) (int, error) {
	if w.f == nil && len(w.buf)+len(s) <= InlineMax && w.err == nil {
		w.buf = append(w.buf, s...)
		w.n += int64(len(s))
		return len(s), nil
	}
	return w.Write([]byte(s))
}

// Commit makes a spilled body durable: flush, fsync, close. The name is durable only after the
// queue syncs Dir. For an inline body it does nothing: the queue's commit stores it.
func (w *Writer) Commit() error {
	if w.err != nil {
		return w.err
	}
	if w.f == nil {
		return nil
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

// Prepend puts p (whole header fields, CRLF-terminated) before everything written so far. An
// inline body gets it in place; a spilled one keeps it apart, in Prefix.
func (w *Writer) Prepend(p []byte) {
	if len(p) == 0 || w.err != nil {
		return
	}
	w.n += int64(len(p))
	if w.f == nil {
		w.buf = append(w.buf, p...)
		copy(w.buf[len(p):], w.buf[:len(w.buf)-len(p)])
		copy(w.buf, p)
		return
	}
	w.prefix = append(append([]byte(nil), p...), w.prefix...)
}

// Overwrite replaces len(p) bytes at off, counted as Reader reads the body, before Commit.
// Only same-length edits are possible: a spilled body is patched in its file, not rewritten.
func (w *Writer) Overwrite(off int64, p []byte) error {
	if w.err != nil {
		return w.err
	}
	if off < 0 || off+int64(len(p)) > w.n {
		return fmt.Errorf("spool: overwrite of %d bytes at %d outside a body of %d", len(p), off, w.n)
	}
	if w.f == nil {
		copy(w.buf[off:], p)
		return nil
	}
	np := int64(len(w.prefix))
	if off < np {
		return fmt.Errorf("spool: overwrite inside the prefix is not supported")
	}
	off -= np
	wa, ok := w.f.(io.WriterAt)
	if !ok {
		return fmt.Errorf("spool: the spool file cannot be patched")
	}
	if err := w.bw.Flush(); err != nil {
		w.err = classify("write", err)
		return w.err
	}
	if _, err := wa.WriteAt(p, off); err != nil {
		w.err = classify("write", err)
		return w.err
	}
	return nil
}

// Prefix is what Prepend kept apart from a spilled body; nil for inline bodies.
func (w *Writer) Prefix() []byte { return w.prefix }

// Reader reads the body as written so far (prefix included), for checks at the end of data.
// It must be closed before Commit or Abort.
func (w *Writer) Reader() (io.ReadCloser, error) {
	if w.err != nil {
		return nil, w.err
	}
	if w.f == nil {
		return io.NopCloser(bytes.NewReader(w.buf)), nil
	}
	if err := w.bw.Flush(); err != nil {
		w.err = classify("write", err)
		return nil, w.err
	}
	f, err := w.s.fs.Open(w.s.path(w.id))
	if err != nil {
		return nil, classify("open", err)
	}
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(w.prefix), f), f}, nil
}

// Replace makes data the whole body written so far, for a check that rewrites the message
// before it is committed (a milter changing header fields or the body). A spilled body's file is
// truncated and rewritten: it is not committed yet, so nothing refers to it.
func (w *Writer) Replace(data []byte) error {
	if w.err != nil {
		return w.err
	}
	if len(w.prefix) > 0 {
		return fmt.Errorf("spool: replace after prepend is not supported")
	}
	if w.f == nil {
		w.buf, w.n = w.buf[:0], 0
		_, err := w.Write(data)
		return err
	}
	t, ok := w.f.(interface {
		Truncate(int64) error
		Seek(int64, int) (int64, error)
	})
	if !ok {
		return fmt.Errorf("spool: the spool file cannot be rewritten")
	}
	w.bw.Reset(w.f) // drop what was buffered: it is being replaced
	if err := t.Truncate(0); err != nil {
		w.err = classify("write", err)
		return w.err
	}
	if _, err := t.Seek(0, io.SeekStart); err != nil {
		w.err = classify("write", err)
		return w.err
	}
	w.n = 0
	_, err := w.Write(data)
	return err
}

// Release returns the in-memory buffer once the body is stored and no longer read from memory.
func (w *Writer) Release() { w.releaseBuf() }

// Abort discards the body when the transaction fails before the queue took it. It is safe after
// a failed Commit.
func (w *Writer) Abort() {
	w.releaseBuf()
	if w.f == nil {
		return
	}
	if !w.closed {
		w.f.Close()
		w.closed = true
	}
	w.s.fs.Remove(w.s.path(w.id))
}
