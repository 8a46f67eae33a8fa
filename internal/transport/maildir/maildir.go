// Package maildir delivers to Maildir folders (the tmp/new/cur layout of
// https://cr.yp.to/proto/maildir.html that Dovecot, mutt and others read). Each delivery is
// atomic: the message is written into an unnamed file (O_TMPFILE) in new/, fsynced, linked into
// new/ under its final name, and new/ is fsynced so the name survives a crash. Where unnamed
// files are not available it is written in tmp/ and renamed instead. It adds Return-Path and
// Delivered-To; the Received header is already in the stored body.
package maildir

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/postamt/postamt/internal/mail"
	"github.com/postamt/postamt/internal/smtp"
	"github.com/postamt/postamt/internal/spool"
	"github.com/postamt/postamt/internal/transport"
)

// Transport delivers to <Root>/<domain>/<local part>/.
type Transport struct {
	Root     string
	Hostname string // part of the unique file name
	// CRLF keeps the stored CRLF line endings. By default lines end in LF, as mail in a Maildir
	// conventionally does (Dovecot's default mail_save_crlf=no, Postfix's local and virtual).
	CRLF bool

	created sync.Map // mailbox dir → struct{}: tmp/new/cur known to exist
	boxes   sync.Map // mailbox dir → *mailbox

	writers int // writers per mailbox; 0 means defaultWriters
	// tmpfileOff is set once unnamed files turned out not to work here; from then on every
	// file is written in tmp/ and renamed into new/.
	tmpfileOff atomic.Bool
	// openTmp and linkTmp replace openTmpfile and linkTmpfile in tests.
	openTmp func(dir string) (*os.File, error)
	linkTmp func(f *os.File, dst string) error
}

func (t *Transport) Name() string { return "maildir" }

// Deliver writes the message once per recipient.
func (t *Transport) Deliver(ctx context.Context, msg *transport.Message, rcpts []mail.Recipient) ([]transport.Result, error) {
	res := make([]transport.Result, len(rcpts))
	for i, r := range rcpts {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := t.deliverOne(msg, r); err != nil {
			res[i].Reply = replyFor(err)
		}
	}
	return res, nil
}

func replyFor(err error) *smtp.Reply {
	var r *smtp.Reply
	if errors.As(err, &r) {
		return r
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return smtp.NewReply(452, smtp.CodeMailboxFull, "Mailbox or disk full").WithErr(err)
	}
	return smtp.NewReply(451, smtp.EnhancedCode{4, 3, 0}, "Local delivery failed").WithErr(err)
}

// MailboxDir returns the directory of the mailbox for addr (local@domain). Path separators and
// leading dots in the parts are escaped so that an address can never name a path outside Root.
func (t *Transport) MailboxDir(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	local, domain := addr, ""
	if at >= 0 {
		local, domain = addr[:at], addr[at+1:]
	}
	return filepath.Join(t.Root, safeName(strings.ToLower(domain)), safeName(local))
}

func safeName(s string) string {
	if s == "" {
		return "_"
	}
	s = strings.ReplaceAll(s, "%", "%25")
	s = strings.ReplaceAll(s, "/", "%2F")
	s = strings.ReplaceAll(s, "\x00", "%00")
	if s[0] == '.' {
		s = "%2E" + s[1:]
	}
	return s
}

func (t *Transport) ensure(dir string) error {
	if _, ok := t.created.Load(dir); ok {
		return nil
	}
	for _, sub := range []string{"tmp", "new", "cur"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return err
		}
	}
	// The new directories must themselves survive a crash before a message is renamed into one.
	for d := dir; d != t.Root && len(d) > len(t.Root); d = filepath.Dir(d) {
		if err := spool.SyncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	t.created.Store(dir, struct{}{})
	return nil
}

// fileName is unique per message and recipient yet the same on every attempt: time of receipt,
// queue ID and a hash of the recipient. A retry after a crash that came between the rename into
// new/ and the queue recording the outcome finds the file already there and does not deliver a
// second copy (unless the user has already moved it on to cur/).
func (t *Transport) fileName(msg *transport.Message, r mail.Recipient) string {
	h := fnv.New32a()
	h.Write([]byte(r.Addr))
	host := strings.NewReplacer("/", `\057`, ":", `\072`).Replace(t.Hostname)
	at := msg.ReceivedAt
	return strconv.FormatInt(at.Unix(), 10) + ".M" + strconv.Itoa(at.Nanosecond()/1000) + "Q" + msg.ID +
		"_" + strconv.FormatUint(uint64(h.Sum32()), 16) + "." + host
}

// request is one message for one mailbox, waiting for that mailbox's writer.
type request struct {
	msg  *transport.Message
	rcpt mail.Recipient
	// content is the whole file, prepared by the delivering goroutine so that the mailbox's
	// writers only create, write and sync; nil for large messages, which the writer streams from
	// the store itself.
	content *bytes.Buffer
	done    chan error
}

// prepareMax is the largest message rendered in memory before it reaches the mailbox writer.
const prepareMax = 1 << 20

// defaultWriters is how many writers work on one mailbox at once. Each batch waits for its
// fsyncs, which on a virtual disk take far longer than the CPU spent on them; a second and third
// batch in flight overlap those waits (and the file system's journal groups their commits).
const defaultWriters = 4

var contentPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// mailbox groups the deliveries into one Maildir. A writer takes every request waiting, writes
// them all, starts their writeback, fsyncs them (the journal commits their block allocations
// together), links them into new/ and syncs new/ once: a group commit for the mailbox. Up to
// Transport.writers writers run at once, each with its own batch.
type mailbox struct {
	mu      sync.Mutex
	pending []*request
	running int
}

func (t *Transport) maxWriters() int {
	if t.writers > 0 {
		return t.writers
	}
	return defaultWriters
}

func (t *Transport) deliverOne(msg *transport.Message, r mail.Recipient) error {
	dir := t.MailboxDir(r.Route.NextHop)
	v, _ := t.boxes.LoadOrStore(dir, &mailbox{})
	mb := v.(*mailbox)
	req := &request{msg: msg, rcpt: r, done: make(chan error, 1)}
	if msg.Size <= prepareMax {
		buf := contentPool.Get().(*bytes.Buffer)
		buf.Reset()
		defer contentPool.Put(buf)
		body, err := msg.Open()
		if err != nil {
			return err
		}
		err = t.render(buf, msg, r, body)
		body.Close()
		if err != nil {
			return err
		}
		req.content = buf
	}
	mb.mu.Lock()
	mb.pending = append(mb.pending, req)
	start := mb.running < t.maxWriters()
	if start {
		mb.running++
	}
	mb.mu.Unlock()
	if start {
		go t.drain(dir, mb)
	}
	return <-req.done
}

func (t *Transport) drain(dir string, mb *mailbox) {
	for {
		mb.mu.Lock()
		batch := mb.pending
		mb.pending = nil
		if len(batch) == 0 {
			mb.running--
			mb.mu.Unlock()
			return
		}
		mb.mu.Unlock()
		t.writeBatch(dir, batch)
	}
}

// file is one message of a batch on its way into new/.
type file struct {
	req  *request
	name string
	f    *os.File
	// tmpfile: f is an unnamed O_TMPFILE in new/, to be linked; otherwise f is tmp/<name>, to
	// be renamed.
	tmpfile bool
	err     error
}

func (t *Transport) writeBatch(dir string, batch []*request) {
	if err := t.ensure(dir); err != nil {
		for _, r := range batch {
			r.done <- err
		}
		return
	}
	files := make([]*file, 0, len(batch))
	for _, req := range batch {
		fl := &file{req: req, name: t.fileName(req.msg, req.rcpt)}
		exists, err := t.create(dir, fl)
		if err != nil || exists {
			req.done <- err // exists: delivered by an attempt whose outcome was lost in a crash
			continue
		}
		files = append(files, fl)
	}
	for _, fl := range files {
		startWriteback(fl.f)
	}
	syncAll(files)
	moved := files[:0]
	for _, fl := range files {
		err := fl.err
		if err == nil {
			err = t.publish(dir, fl)
		} else {
			t.discard(dir, fl)
		}
		if err != nil {
			fl.req.done <- err
			continue
		}
		moved = append(moved, fl)
	}
	if len(moved) == 0 {
		return
	}
	// The names become durable with new/ itself; only then is any of them reported delivered.
	err := spool.SyncDir(filepath.Join(dir, "new"))
	for _, fl := range moved {
		fl.req.done <- err
	}
}

// syncParallel bounds the fsyncs one batch has in flight (each holds an OS thread while it waits).
const syncParallel = 16

// syncAll fsyncs the batch's files concurrently: each fsync waits for the disk (a cache flush
// on most), and the block layer merges flushes that are in flight together, so N files cost
// about one wait instead of N.
func syncAll(files []*file) {
	if len(files) == 1 {
		files[0].err = files[0].f.Sync()
		return
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, syncParallel)
	for _, fl := range files {
		sem <- struct{}{}
		wg.Go(func() {
			fl.err = fl.f.Sync()
			<-sem
		})
	}
	wg.Wait()
}

// create makes fl's file and writes the message into it: unnamed in new/ where the system can,
// otherwise in tmp/. exists reports (tmp/ way only) that new/ already has the message.
func (t *Transport) create(dir string, fl *file) (exists bool, err error) {
	if !t.tmpfileOff.Load() {
		open := t.openTmp
		if open == nil {
			open = openTmpfile
		}
		f, err := open(filepath.Join(dir, "new"))
		if err == nil {
			if err := t.write(f, fl.req); err != nil {
				f.Close() // the unnamed file vanishes with its last descriptor
				return false, err
			}
			fl.f, fl.tmpfile = f, true
			return false, nil
		}
		if !tmpfileUnsupported(err) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EPERM) {
			return false, err // about new/ (gone, not ours), not about O_TMPFILE
		}
		t.tmpfileOff.Store(true)
	}
	if _, err := os.Stat(filepath.Join(dir, "new", fl.name)); err == nil {
		return true, nil
	}
	f, err := t.writeTmp(filepath.Join(dir, "tmp", fl.name), fl.req)
	if err != nil {
		return false, err
	}
	fl.f, fl.tmpfile = f, false
	return false, nil
}

// tmpfileUnsupported reports an error that says O_TMPFILE files cannot be made or linked here at
// all (old kernel: EISDIR or EINVAL; file system without support: EOPNOTSUPP; linking, with no
// /proc and no CAP_DAC_READ_SEARCH for AT_EMPTY_PATH: ENOENT or EPERM), as opposed to one about
// this file. For the open, ENOENT and EPERM are about the directory and do not count.
func tmpfileUnsupported(err error) bool {
	for _, e := range []error{syscall.EOPNOTSUPP, syscall.EISDIR, syscall.EINVAL, syscall.EPERM, syscall.ENOENT, errors.ErrUnsupported} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// publish gives the synced file its name in new/ and closes it. For an unnamed file, an existing
// name means an earlier attempt delivered the message (its outcome lost in a crash): success,
// without a second copy. The caller syncs new/ before reporting either.
func (t *Transport) publish(dir string, fl *file) error {
	final := filepath.Join(dir, "new", fl.name)
	if !fl.tmpfile {
		err := fl.f.Close()
		if err == nil {
			err = os.Rename(filepath.Join(dir, "tmp", fl.name), final)
		}
		if err != nil {
			os.Remove(filepath.Join(dir, "tmp", fl.name))
		}
		return err
	}
	link := t.linkTmp
	if link == nil {
		link = linkTmpfile
	}
	err := link(fl.f, final)
	fl.f.Close()
	if err == nil || errors.Is(err, os.ErrExist) {
		return nil
	}
	if !tmpfileUnsupported(err) {
		return err
	}
	// Unnamed files can be made but not linked here: from now on use tmp/, this file too.
	t.tmpfileOff.Store(true)
	exists, err := t.create(dir, fl)
	if err != nil || exists {
		return err
	}
	err = fl.f.Sync()
	if err != nil {
		t.discard(dir, fl)
		return err
	}
	return t.publish(dir, fl)
}

// discard closes and removes a file that failed before publish.
func (t *Transport) discard(dir string, fl *file) {
	fl.f.Close()
	if !fl.tmpfile {
		os.Remove(filepath.Join(dir, "tmp", fl.name))
	}
}

// writeTmp writes the message into tmp/ and returns the still open file for the batch's fsync.
func (t *Transport) writeTmp(tmp string, req *request) (*os.File, error) {
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := t.write(f, req); err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, err
	}
	return f, nil
}

func (t *Transport) write(f *os.File, req *request) error {
	if req.content != nil {
		_, err := f.Write(req.content.Bytes())
		return err
	}
	return t.stream(f, req.msg, req.rcpt)
}

var bufPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 64<<10) }}

// stream writes a large message straight from the store into f.
func (t *Transport) stream(f *os.File, msg *transport.Message, r mail.Recipient) error {
	body, err := msg.Open()
	if err != nil {
		return err
	}
	defer body.Close()
	bw := bufPool.Get().(*bufio.Writer)
	bw.Reset(f)
	defer bufPool.Put(bw)
	if err := t.render(bw, msg, r, body); err != nil {
		return err
	}
	return bw.Flush()
}

// render writes the file content: our two headers, then the stored message.
func (t *Transport) render(w io.Writer, msg *transport.Message, r mail.Recipient, body io.Reader) error {
	eol := "\n"
	if t.CRLF {
		eol = "\r\n"
	}
	// RFC 5321 §4.4: the final delivery MTA adds Return-Path with the reverse-path.
	if _, err := fmt.Fprintf(w, "Return-Path: <%s>%sDelivered-To: %s%s", msg.From, eol, r.Addr, eol); err != nil {
		return err
	}
	if t.CRLF {
		_, err := io.Copy(w, body)
		return err
	}
	return copyLF(w, body)
}

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyLF copies r to w turning CRLF into LF. The spool only ever holds CRLF line endings (the
// SMTP server refuses bare CR and LF), so every CR is followed by LF, possibly in the next read.
func copyLF(w io.Writer, r io.Reader) error {
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	buf := *bp
	pendingCR := false
	for {
		n, err := r.Read(buf)
		p := buf[:n]
		if pendingCR && len(p) > 0 && p[0] != '\n' {
			if _, werr := w.Write([]byte{'\r'}); werr != nil {
				return werr
			}
		}
		if pendingCR && len(p) > 0 {
			pendingCR = false
		}
		for len(p) > 0 {
			i := bytes.IndexByte(p, '\r')
			if i < 0 {
				if _, werr := w.Write(p); werr != nil {
					return werr
				}
				break
			}
			if _, werr := w.Write(p[:i]); werr != nil {
				return werr
			}
			if i+1 == len(p) {
				pendingCR = true
				break
			}
			if p[i+1] != '\n' {
				if _, werr := w.Write(p[i : i+1]); werr != nil {
					return werr
				}
			}
			p = p[i+1:]
		}
		if err == io.EOF {
			if pendingCR {
				_, werr := w.Write([]byte{'\r'})
				return werr
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}
