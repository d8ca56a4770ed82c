package tour

// FieldManager names the tour in managed fields.
const FieldManager = "hapod-tour"
