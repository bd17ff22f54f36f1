//! Enums for the closed choices of a configuration (device kinds, schedules, modes): parsed from and written as
//! their lowercase names, so one type serves the command line (clap uses `FromStr`), TOML/JSON files and the
//! resolved `config.json`, and a bad value is rejected once, where it is read, with the list of valid names.

/// Declare a fieldless enum whose values have names (and optional aliases): `FromStr`, `Display` and serde as those
/// names, and `NAMES` for messages.
#[macro_export]
macro_rules! choice_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal $(| $alias:literal)* ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// The accepted names, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The canonical name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text ),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::choice::UnknownChoice;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $text $(| $alias)* => Ok($name::$variant), )+
                    _ => Err($crate::choice::UnknownChoice::new(s, Self::NAMES)),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A value that is none of a choice's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownChoice {
    given: String,
    expected: String,
}

impl UnknownChoice {
    /// `given` was not one of `names`.
    pub fn new(given: &str, names: &[&str]) -> Self {
        let expected = match names {
            [] => String::new(),
            [one] => (*one).to_string(),
            [init @ .., last] => format!("{} or {last}", init.join(", ")),
        };
        UnknownChoice { given: given.to_string(), expected }
    }
}

impl std::fmt::Display for UnknownChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} is not a valid value: expected {}", self.given, self.expected)
    }
}

impl std::error::Error for UnknownChoice {}

#[cfg(test)]
mod tests {
    crate::choice_enum! {
        /// A test choice.
        pub enum Fruit {
            /// An apple.
            Apple = "apple" | "apples",
            /// A pear.
            Pear = "pear",
        }
    }

    #[test]
    fn names_aliases_and_errors() {
        assert_eq!("apples".parse::<Fruit>(), Ok(Fruit::Apple));
        assert_eq!(Fruit::Pear.to_string(), "pear");
        let err = "plum".parse::<Fruit>().unwrap_err().to_string();
        assert_eq!(err, "\"plum\" is not a valid value: expected apple or pear");
        assert_eq!(serde_json::to_string(&Fruit::Apple).unwrap(), "\"apple\"");
        assert_eq!(serde_json::from_str::<Fruit>("\"pear\"").unwrap(), Fruit::Pear);
    }
}
