// Package libnbd stands in for libnbd's Go bindings, which the Go module proxy does not serve:
// only virt-launcher's changed-block backup code imports them, and here every call fails.
package libnbd

import "errors"

// The NBD metadata contexts and extent flags KubeVirt reads (values as in libnbd.h).
const (
	CONTEXT_BASE_ALLOCATION   = "base:allocation"
	CONTEXT_QEMU_DIRTY_BITMAP = "qemu:dirty-bitmap:"
	STATE_HOLE                = 1
	STATE_ZERO                = 2
	STATE_DIRTY               = 1
)

var errUnavailable = errors.New("libnbd is not available in this build")

// Libnbd is a handle that never connects.
type Libnbd struct{}

// LibnbdExtent is one extent of a block status reply.
type LibnbdExtent struct {
	Length uint64
	Flags  uint64
}

// ExtentCallback64 receives block status extents.
type ExtentCallback64 func(metacontext string, offset uint64, entries []LibnbdExtent, err *int) int

// BlockStatus64Optargs are the optional arguments of BlockStatus64.
type BlockStatus64Optargs struct{}

// PreadOptargs are the optional arguments of Pread.
type PreadOptargs struct{}

// Create fails: there is no libnbd behind this package.
func Create() (*Libnbd, error) { return nil, errUnavailable }

func (h *Libnbd) Close() error                              { return nil }
func (h *Libnbd) AddMetaContext(string) error               { return errUnavailable }
func (h *Libnbd) CanMetaContext(string) (bool, error)       { return false, errUnavailable }
func (h *Libnbd) GetSize() (uint64, error)                  { return 0, errUnavailable }
func (h *Libnbd) SetExportName(string) error                { return errUnavailable }
func (h *Libnbd) ConnectUnix(string) error                  { return errUnavailable }
func (h *Libnbd) Pread([]byte, uint64, *PreadOptargs) error { return errUnavailable }

func (h *Libnbd) BlockStatus64(uint64, uint64, ExtentCallback64, *BlockStatus64Optargs) error {
	return errUnavailable
}
