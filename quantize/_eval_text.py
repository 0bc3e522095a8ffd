"""The default held-out text for perplexity (written for this project; no download). One string per paragraph."""

EVAL_PARAGRAPHS = (
    (
        'The history of bicycles begins in the early nineteenth century, when inventors in Europe built '
        'wooden machines that riders pushed along with their feet. Pedals attached to the front wheel came '
        'decades later, and the chain drive with two wheels of equal size made the design that most people '
        'ride today.'
    ),
    (
        'Water boils at one hundred degrees Celsius at sea level. At higher altitudes the air pressure is '
        'lower, so water boils at a lower temperature and food takes longer to cook. Pressure cookers raise '
        'the pressure inside the pot, which lets the water get hotter before it boils.'
    ),
    (
        'To make a simple tomato sauce, warm olive oil in a pan, add chopped garlic and cook it for a minute '
        'without letting it brown. Add crushed tomatoes, a pinch of salt and a few basil leaves, then let the'
        ' sauce simmer for twenty minutes while stirring from time to time.'
    ),
    (
        'A function in Python is defined with the keyword def, followed by its name and a list of parameters '
        'in parentheses. The body is indented, and the return statement sends a value back to the caller. '
        'Functions without a return statement give back None.'
    ),
    (
        'The customer wrote that the package arrived two days late and the box was damaged, but the '
        'headphones inside worked perfectly. She asked whether she could get a discount on her next order. '
        'The support team apologized, explained the delay and offered a coupon for ten percent off.'
    ),
    (
        'Photosynthesis is the process plants use to turn light into chemical energy. Chlorophyll in the '
        'leaves absorbs sunlight, and the plant uses that energy to combine carbon dioxide from the air with '
        'water from the soil, producing sugar and releasing oxygen.'
    ),
    (
        'Question: What is the largest planet in our solar system?\n'
        'Answer: Jupiter is the largest planet. It is a gas giant more than eleven times wider than Earth, '
        'and it has dozens of moons, including Ganymede, the largest moon in the solar system.'
    ),
    (
        'Good sleep habits include going to bed at the same time every night, keeping the bedroom dark and '
        'cool, and avoiding screens for an hour before sleeping. Caffeine late in the day can make it harder '
        'to fall asleep, even for people who feel they are used to it.'
    ),
    (
        'The meeting is moved from Tuesday to Thursday at three in the afternoon. Please bring the quarterly '
        'figures and the draft of the new budget, and let me know if the new time does not work for you.'
    ),
)
