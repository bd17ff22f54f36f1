//! The built-in corpus: made-up research stations, so that `--env multiturn_qa` has something to search and
//! questions to answer with no download and no data files.
//!
//! How it is made: a fixed seed drives [`grpo_sdk::rng::SplitMix64`] through lists of syllables, regions, names,
//! instruments and ships. Each of [`STATIONS`] stations gets a markdown page of four short sections stating eight
//! facts (founding year, elevation, team lead, winter staff, main instrument, supply ship, nearest town and its
//! distance), padded with generic sentences, and one question per fact. Every fact sentence names its station, so the question's
//! answer sits in exactly one chunk; [`Builtin::questions`] records that chunk (`chunk_id`, `context`), as
//! re-grpo's generated data does. The same build gives the same corpus on every machine.

use grpo_toolcall::rng;

use crate::corpus::{chunk_documents, Chunk};

/// How many stations (documents) the corpus has.
pub const STATIONS: usize = 30;
const SEED: u64 = 0x5157_4154_494f_4e53;

const SYLLABLES: [&str; 20] = [
    "ka", "lo", "ve", "ri", "dan", "mor", "tel", "si", "bra", "nu", "quen", "for", "hal", "zo", "pet", "ar", "win",
    "del", "mar", "tov",
];
const SUFFIXES: [&str; 8] = ["Ridge", "Point", "Basin", "Hollow", "Crest", "Harbor", "Flats", "Fjord"];
const REGIONS: [&str; 6] = [
    "the northern ice shelf",
    "the eastern highlands",
    "the southern archipelago",
    "the western desert",
    "the central plateau",
    "the coastal marshes",
];
const FIRST: [&str; 16] = [
    "Mara", "Iven", "Tomas", "Lucia", "Anika", "Odell", "Priya", "Rafael", "Sana", "Yusuf", "Greta", "Hollis", "Noor",
    "Emil", "Ines", "Kofi",
];
const LAST: [&str; 16] = [
    "Okafor",
    "Lindqvist",
    "Varga",
    "Moreau",
    "Castell",
    "Ibsen",
    "Tanaka",
    "Reyes",
    "Halloran",
    "Novak",
    "Abara",
    "Petrov",
    "Sorensen",
    "Quint",
    "Marlow",
    "Duarte",
];
const INSTRUMENTS: [&str; 8] = [
    "a cosmic ray neutron monitor",
    "a twelve metre radio dish",
    "a lidar array",
    "a seismometer vault",
    "a magnetometer chain",
    "an ice core drilling rig",
    "a weather balloon hangar",
    "a spectrograph dome",
];
const SHIP_ADJ: [&str; 8] = ["Northern", "Silver", "Patient", "Crimson", "Quiet", "Bold", "Amber", "Distant"];
const SHIP_BIRD: [&str; 8] = ["Tern", "Petrel", "Gannet", "Skua", "Heron", "Albatross", "Puffin", "Kittiwake"];
const FILLER: [&str; 12] = [
    "Visitors are asked to register with the duty officer on arrival and to attend a short safety briefing.",
    "Power comes from a mix of diesel generators and a small wind turbine, and fuel is rationed in the dark months.",
    "The common room doubles as a library, and the kitchen rota changes every Sunday evening.",
    "Storms can close the landing area for days at a time, so every team keeps a week of spare supplies.",
    "Data are copied to tape each night and sent out with the next supply run for safekeeping.",
    "A weekly radio call links the team with the coordinating office and with the other stations.",
    "Field trips leave only in pairs, and each pair carries a beacon and a satellite phone.",
    "The workshop can repair most equipment on site, although spare parts are often scarce.",
    "Fresh water is drawn from a melt pond in summer and from snow melters in winter.",
    "Every season ends with a short report that summarises the measurements and the state of the buildings.",
    "New arrivals usually need a few days to adjust to the light, the cold and the quiet.",
    "Cooking duty rotates among the whole team, including the station lead.",
];

/// One built-in question, with where its answer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinQuestion {
    /// The question.
    pub question: String,
    /// The reference answer.
    pub answer: String,
    /// `easy` or `medium`.
    pub difficulty: &'static str,
    /// The chunk that holds the answer.
    pub chunk_id: usize,
}

/// The built-in corpus, already chunked, and its questions.
pub struct Builtin {
    /// The chunks.
    pub chunks: Vec<Chunk>,
    /// One question per station fact, in station order.
    pub questions: Vec<BuiltinQuestion>,
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// Build the corpus with chunks of `chunk_size` characters.
pub fn build(chunk_size: usize) -> Builtin {
    let mut rng = rng::for_task(SEED, 0, 0);
    let mut names: Vec<String> = Vec::new();
    let mut docs: Vec<(String, String)> = Vec::new();
    // (question, answer, difficulty, the sentence that states it)
    let mut facts: Vec<(String, String, &'static str, String)> = Vec::new();
    while names.len() < STATIONS {
        let n = rng.between(2, 3);
        let word: String = (0..n).map(|_| *rng.pick(&SYLLABLES)).collect();
        let name = format!("{} {}", capitalised(&word), rng.pick(&SUFFIXES));
        if names.contains(&name) {
            continue;
        }
        names.push(name.clone());
        let town = capitalised(&(0..2).map(|_| *rng.pick(&SYLLABLES)).collect::<String>()) + "ville";
        let year = rng.between(1950, 2015);
        let elevation = rng.between(10, 4200);
        let lead = format!("{} {}", rng.pick(&FIRST), rng.pick(&LAST));
        let staff = rng.between(5, 90);
        let instrument = *rng.pick(&INSTRUMENTS);
        let ship = format!("{} {}", rng.pick(&SHIP_ADJ), rng.pick(&SHIP_BIRD));
        let distance = rng.between(20, 900);
        let region = rng.pick(&REGIONS);
        let mut filler = |k: usize| (0..k).map(|_| *rng.pick(&FILLER)).collect::<Vec<_>>().join(" ");

        let s_year = format!("{name} Station was founded in {year} in {region}.");
        let s_elev = format!("The main building of {name} Station stands at an elevation of {elevation} metres.");
        let s_lead = format!("The science team at {name} Station is led by {lead}.");
        let s_staff = format!("During the winter, {staff} people live and work at {name} Station.");
        let s_instr = format!("The main instrument at {name} Station is {instrument}.");
        let s_ship = format!("Supplies reach {name} Station aboard the supply ship {ship}.");
        let s_town = format!("The nearest town to {name} Station is {town}.");
        let s_dist = format!("{town} lies {distance} kilometres from {name} Station by the supply route.");
        let doc = format!(
            "# {name} Station\n\n{s_year} {s_elev} {}\n\n## People\n\n{s_lead} {s_staff} {}\n\n## Equipment\n\n{s_instr} {}\n\n\
             ## Logistics\n\n{s_ship} {s_town} {s_dist} {}\n",
            filler(2),
            filler(2),
            filler(3),
            filler(2),
        );
        let slug = name.to_lowercase().replace(' ', "-");
        docs.push((format!("stations/{slug}.md"), doc));
        let q =
            |text: String, answer: String, difficulty, sentence: &String| (text, answer, difficulty, sentence.clone());
        facts.extend([
            q(format!("In what year was {name} Station founded?"), year.to_string(), "easy", &s_year),
            q(
                format!("At what elevation, in metres, does the main building of {name} Station stand?"),
                elevation.to_string(),
                "medium",
                &s_elev,
            ),
            q(format!("Who leads the science team at {name} Station?"), lead, "easy", &s_lead),
            q(
                format!("How many people live at {name} Station during the winter?"),
                staff.to_string(),
                "medium",
                &s_staff,
            ),
            q(format!("What is the main instrument at {name} Station?"), instrument.to_string(), "medium", &s_instr),
            q(format!("Which supply ship brings supplies to {name} Station?"), ship, "easy", &s_ship),
            q(format!("What is the nearest town to {name} Station?"), town.clone(), "easy", &s_town),
            q(
                format!("How many kilometres is {name} Station from {town} by the supply route?"),
                distance.to_string(),
                "medium",
                &s_dist,
            ),
        ]);
    }
    let chunks = chunk_documents(docs.iter().map(|(n, t)| (n.clone(), t.as_str())), chunk_size);
    let questions = facts
        .into_iter()
        .filter_map(|(question, answer, difficulty, sentence)| {
            // A very small chunk size can cut a sentence; such facts have no single chunk and are left out.
            let chunk_id = chunks.iter().find(|c| c.text.contains(&sentence))?.id;
            Some(BuiltinQuestion { question, answer, difficulty, chunk_id })
        })
        .collect();
    Builtin { chunks, questions }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_corpus_is_deterministic_and_answerable() {
        let a = build(1000);
        let b = build(1000);
        assert_eq!(a.chunks, b.chunks);
        assert_eq!(a.questions, b.questions);
        assert_eq!(a.questions.len(), STATIONS * 8);
        assert!(a.chunks.len() > STATIONS, "{} chunks", a.chunks.len());
        for q in &a.questions {
            assert!(q.question.chars().count() < 128, "{}", q.question);
            let text = &a.chunks[q.chunk_id].text;
            assert!(text.contains(&q.answer) || text.contains(&q.answer.to_lowercase()), "{q:?}");
        }
    }
}
