//! A small macro for the ABI's numbered, named enums.

/// Defines a `#[repr]` enum whose variants have a wire value and an ABI.md
/// spelling, with `ALL`, `value()`, `from_value()`, `name()` and
/// `from_name()`.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $repr:ty {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $value:literal => $text:literal,
            )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr($repr)]
        pub enum $name {
            $(
                $(#[$vmeta])*
                #[doc = concat!("ABI name `", $text, "`.")]
                $variant = $value,
            )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: [$name; [$(stringify!($variant)),+].len()] = [$($name::$variant),+];

            /// The value on the wire.
            pub const fn value(self) -> $repr {
                self as $repr
            }

            /// The variant with wire value `value`, if there is one.
            pub const fn from_value(value: $repr) -> Option<Self> {
                match value {
                    $($value => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The spelling used by ABI.md (and by scenario files).
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The variant spelt `name` in ABI.md; exact match only.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}
