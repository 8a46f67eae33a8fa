package attachments

import (
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
)

// zip looks inside a zip archive: every entry's name, every entry's first bytes, macro
// projects of OOXML documents, and zips inside (up to MaxArchiveDepth). All reads are charged
// to the attachment's budget, counting bytes really decompressed, never the sizes the archive
// claims.
func (c *Check) zip(ctx context.Context, name string, data []byte, b *budget, depth int) (*Finding, error) {
	if depth >= c.o.MaxArchiveDepth {
		return &Finding{File: name, Why: fmt.Sprintf("archives nested deeper than %d levels", c.o.MaxArchiveDepth), Structure: true}, nil
	}
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		// Not a zip after all, or a damaged one the MUA cannot open either.
		return nil, nil
	}
	if len(zr.File) > c.o.MaxArchiveEntries {
		return &Finding{File: name, Why: fmt.Sprintf("archive with more than %d entries", c.o.MaxArchiveEntries), Structure: true}, nil
	}
	for _, zf := range zr.File {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		inner := name + "/" + zf.Name
		if name == "" {
			inner = zf.Name
		}
		if strings.EqualFold(path.Base(zf.Name), "vbaProject.bin") && c.types[OfficeMacro] {
			return &Finding{File: name, Why: "Office document with macros"}, nil
		}
		if !c.o.ScanArchives {
			continue // only here for the OOXML macro check
		}
		if f := c.byName(zf.Name); f != nil {
			f.File = inner
			return f, nil
		}
		if zf.Flags&1 != 0 {
			if c.o.BlockEncrypted {
				return &Finding{File: inner, Why: "encrypted archive content that cannot be scanned"}, nil
			}
			continue // unreadable without the password; its name was checked
		}
		if zf.FileInfo().IsDir() {
			continue
		}
		rc, err := zf.Open()
		if err != nil {
			continue // unsupported method
		}
		f, err := c.content(ctx, inner, rc, b, depth+1)
		rc.Close()
		if f != nil || err != nil {
			return f, err
		}
	}
	return nil, nil
}

// errOverBudget reports input beyond the budget.
var errOverBudget = errors.New("over the archive size budget")

// charged reads from r while the budget lasts: inspecting costs what it decodes and
// decompresses. At the end of the budget it looks one byte further, so that a stream that
// ends exactly there is not mistaken for one that goes on.
type charged struct {
	r io.Reader
	b *budget
}

func (c *charged) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.b.left <= 0 {
		var one [1]byte
		for range 100 {
			n, err := c.r.Read(one[:])
			if n > 0 {
				return 0, errOverBudget
			}
			if err != nil {
				return 0, err
			}
		}
		return 0, io.ErrNoProgress
	}
	if int64(len(p)) > c.b.left {
		p = p[:c.b.left]
	}
	n, err := c.r.Read(p)
	c.b.left -= int64(n)
	return n, err
}
