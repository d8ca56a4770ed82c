package tour

// FieldManager names the tour in managed fields.
const FieldManager = "hapod-tour"

func ptrTo[T any](v T) *T { return &v }
